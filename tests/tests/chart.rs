//! The Helm chart on the real API server: it lints strictly, its rendered
//! objects pass server-side dry-run, it installs and uninstalls cleanly, and
//! its RBAC grants each identity what it needs and nothing more — proven with
//! `kubectl auth can-i --as=system:serviceaccount:…`.

use serde_json::Value;
use sigil_tests::cluster::{TestCluster, workspace_root};

fn chart_dir() -> String {
    workspace_root().join("charts/sigil").display().to_string()
}

/// Kubernetes version to render for (the chart requires ≥ 1.30, helm's
/// offline default is older).
const KUBE_VERSION: &str = "1.36.0";

/// `(kind, namespace, name)` of every object in a multi-document manifest.
fn objects(manifest: &str) -> Vec<(String, Option<String>, String)> {
    let mut out = Vec::new();
    for doc in manifest.split("\n---") {
        let Ok(value) = serde_saphyr::from_str::<Value>(doc) else {
            continue;
        };
        let (Some(kind), Some(name)) = (value["kind"].as_str(), value["metadata"]["name"].as_str())
        else {
            continue;
        };
        let namespace = value["metadata"]["namespace"].as_str().map(str::to_owned);
        out.push((kind.to_owned(), namespace, name.to_owned()));
    }
    out
}

#[tokio::test]
async fn chart_lints_strictly_and_renders_objects_the_api_server_accepts() {
    let cluster = TestCluster::shared().await;
    cluster
        .helm(&["lint", "--strict", &chart_dir()])
        .expect_success("helm lint --strict");
    // The values schema refuses a bad value with a message naming it.
    let bad = cluster.helm(&[
        "lint",
        "--strict",
        &chart_dir(),
        "--set",
        "issuer.tokenTyp=jwt",
    ]);
    assert!(!bad.success, "an invalid tokenTyp passed the values schema");
    assert!(
        format!("{}{}", bad.stdout, bad.stderr).contains("tokenTyp"),
        "schema error does not name tokenTyp: {bad:?}"
    );

    let ns = cluster.namespace("render").await;
    let rendered = cluster
        .helm(&[
            "template",
            "sigil-render",
            &chart_dir(),
            "-n",
            &ns,
            "--kube-version",
            KUBE_VERSION,
        ])
        .expect_success("helm template");
    let path = cluster
        .control_plane
        .dir()
        .join(format!("{ns}-rendered.yaml"));
    std::fs::write(&path, &rendered.stdout).expect("writing rendered chart");
    let dry_run = cluster
        .kubectl(&[
            "apply",
            "--dry-run=server",
            "--server-side",
            "-n",
            &ns,
            "-f",
            &path.display().to_string(),
        ])
        .expect_success("server-side dry-run of the rendered chart");
    let kinds: Vec<String> = objects(&rendered.stdout)
        .into_iter()
        .map(|(kind, _, _)| kind)
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "SigningKey",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "chart renders no {kind}: {kinds:?}"
        );
    }
    assert!(
        dry_run
            .stdout
            .contains("serverside-applied (server dry run)"),
        "{dry_run:?}"
    );
}

#[tokio::test]
async fn chart_installs_uninstalls_and_grants_least_privilege() {
    let cluster = TestCluster::shared().await;
    let ns = cluster.namespace("sigil-system").await;
    let other = cluster.namespace("app").await;

    cluster
        .helm(&["install", "sigil", &chart_dir(), "-n", &ns])
        .expect_success("helm install");
    let manifest = cluster
        .helm(&["get", "manifest", "sigil", "-n", &ns])
        .expect_success("helm get manifest")
        .stdout;
    let installed = objects(&manifest);
    assert!(installed.len() >= 15, "too few objects: {installed:?}");
    for (kind, namespace, name) in &installed {
        let mut args = vec!["get", kind.as_str(), name.as_str()];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace.as_str()]);
        }
        cluster
            .kubectl(&args)
            .expect_success(&format!("{kind} {name} exists after install"));
    }

    let issuer = format!("system:serviceaccount:{ns}:sigil-issuer");
    let operator = format!("system:serviceaccount:{ns}:sigil-operator");
    let can = |who: &str, verb: &str, resource: &str, namespace: Option<&str>| -> bool {
        // `kubectl auth can-i VERB x/y` reads y as an object name: pass
        // subresources with --subresource.
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, sub)) => (r, Some(sub)),
            None => (resource, None),
        };
        let mut args = vec!["auth", "can-i", verb, resource, "--as", who];
        if let Some(sub) = subresource {
            args.extend(["--subresource", sub]);
        }
        match namespace {
            Some(n) => args.extend(["-n", n]),
            None => args.push("--all-namespaces"),
        }
        let out = cluster.kubectl(&args);
        match out.stdout.trim() {
            "yes" => true,
            "no" => false,
            _ => panic!("kubectl auth can-i {args:?}: {out:?}"),
        }
    };

    // The issuer reads the two kinds everywhere, Secrets only at home, by
    // a (label-selected) watch: never a get, so not the CA Secret by name.
    assert!(can(&issuer, "list", "oauthclients.sigil.dev", None));
    assert!(can(&issuer, "watch", "signingkeys.sigil.dev", None));
    assert!(can(&issuer, "list", "secrets", Some(&ns)));
    assert!(can(&issuer, "watch", "secrets", Some(&ns)));
    assert!(!can(&issuer, "get", "secrets", Some(&ns)));
    let ca_secret = cluster.kubectl(&[
        "auth",
        "can-i",
        "get",
        "secrets/sigil-issuer-tls-ca",
        "--as",
        &issuer,
        "-n",
        &ns,
    ]);
    assert_eq!(
        ca_secret.stdout.trim(),
        "no",
        "issuer can get the CA key's Secret: {ca_secret:?}"
    );
    assert!(
        !can(&issuer, "get", "secrets", Some(&other)),
        "issuer can read another namespace's Secrets"
    );
    assert!(!can(&issuer, "list", "secrets", Some(&other)));
    assert!(!can(&issuer, "list", "secrets", None));
    for verb in ["create", "patch", "update", "delete"] {
        assert!(!can(&issuer, verb, "secrets", Some(&ns)), "issuer {verb}");
    }
    assert!(!can(
        &issuer,
        "patch",
        "oauthclients.sigil.dev/status",
        Some(&other)
    ));
    assert!(!can(
        &issuer,
        "update",
        "oauthclients.sigil.dev",
        Some(&other)
    ));

    // The operator writes client Secrets and status, never client specs.
    // Secrets by server-side apply only (no update).
    assert!(can(&operator, "create", "secrets", Some(&other)));
    assert!(can(&operator, "patch", "secrets", Some(&other)));
    assert!(!can(&operator, "update", "secrets", Some(&other)));
    assert!(can(&operator, "watch", "oauthclients.sigil.dev", None));
    assert!(can(
        &operator,
        "patch",
        "oauthclients.sigil.dev/status",
        Some(&other)
    ));
    assert!(!can(
        &operator,
        "update",
        "oauthclients.sigil.dev",
        Some(&other)
    ));
    assert!(!can(
        &operator,
        "delete",
        "oauthclients.sigil.dev",
        Some(&other)
    ));
    assert!(can(
        &operator,
        "patch",
        "signingkeys.sigil.dev/status",
        Some(&ns)
    ));
    assert!(!can(
        &operator,
        "patch",
        "signingkeys.sigil.dev/status",
        Some(&other)
    ));
    assert!(can(
        &operator,
        "update",
        "leases.coordination.k8s.io",
        Some(&ns)
    ));
    assert!(!can(
        &operator,
        "update",
        "leases.coordination.k8s.io",
        Some(&other)
    ));
    assert!(can(
        &operator,
        "create",
        "events.events.k8s.io",
        Some(&other)
    ));
    assert!(!can(&operator, "create", "pods", Some(&other)));
    assert!(!can(
        &operator,
        "patch",
        "validatingwebhookconfigurations",
        None
    ));

    // Namespace users manage OAuthClients through the aggregated edit role,
    // but cannot forge their status.
    cluster
        .kubectl(&[
            "create",
            "rolebinding",
            "dev-edit",
            "--clusterrole=edit",
            "--user=dev",
            "-n",
            &other,
        ])
        .expect_success("binding edit");
    assert!(can("dev", "create", "oauthclients.sigil.dev", Some(&other)));
    assert!(can("dev", "delete", "oauthclients.sigil.dev", Some(&other)));
    assert!(!can(
        "dev",
        "patch",
        "oauthclients.sigil.dev/status",
        Some(&other)
    ));
    assert!(!can("dev", "create", "signingkeys.sigil.dev", Some(&ns)));

    cluster
        .helm(&["uninstall", "sigil", "-n", &ns, "--wait"])
        .expect_success("helm uninstall");
    for (kind, namespace, name) in &installed {
        let mut args = vec![
            "get",
            kind.as_str(),
            name.as_str(),
            "--ignore-not-found",
            "-o",
            "name",
        ];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace.as_str()]);
        }
        let out = cluster.kubectl(&args).expect_success("kubectl get");
        assert!(
            out.stdout.trim().is_empty(),
            "{kind} {name} survived helm uninstall"
        );
    }
    for crd in ["oauthclients.sigil.dev", "signingkeys.sigil.dev"] {
        cluster
            .kubectl(&["get", "crd", crd])
            .expect_success("CRDs stay after uninstall, as Helm does");
    }
}

/// Every rendered document, parsed.
fn documents(manifest: &str) -> Vec<Value> {
    manifest
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
        .filter(|doc| doc["kind"].is_string())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// The pod webhook has its own port: the MutatingWebhookConfiguration calls
/// a Service port that leads to the issuer's --webhook-listen, not to the
/// public token port, and with the NetworkPolicy only the API server's
/// range reaches it.
#[tokio::test]
async fn chart_serves_the_webhook_on_its_own_port_for_the_api_server_only() {
    let cluster = TestCluster::shared().await;
    let render = |extra: &[&str]| {
        let mut args = vec![
            "template",
            "sigil",
            &chart_dir(),
            "-n",
            "sigil-system",
            "--kube-version",
            KUBE_VERSION,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster.helm(&args)
    };
    let rendered = render(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.apiServerCIDRs={10.0.0.0/24,192.0.2.10/32}",
    ])
    .expect_success("helm template with the NetworkPolicy");
    let docs = documents(&rendered.stdout);

    let webhook = find(&docs, "MutatingWebhookConfiguration", "sigil");
    let target = &webhook["webhooks"][0]["clientConfig"]["service"];
    assert_eq!(target["name"], "sigil-issuer");
    assert_eq!(target["path"], "/webhooks/pods");
    let service = find(&docs, "Service", "sigil-issuer");
    let ports = service["spec"]["ports"].as_array().expect("Service ports");
    let webhook_port = ports
        .iter()
        .find(|p| p["port"] == target["port"])
        .expect("the webhook's Service port");
    assert_eq!(webhook_port["targetPort"], "webhook");
    let https = ports.iter().find(|p| p["name"] == "https").expect("https");
    assert_ne!(https["port"], target["port"], "webhook on the token port");

    let deployment = find(&docs, "Deployment", "sigil-issuer");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let container_port = container["ports"]
        .as_array()
        .expect("container ports")
        .iter()
        .find(|p| p["name"] == "webhook")
        .expect("a webhook container port")["containerPort"]
        .clone();
    assert_eq!(container_port, 9443);
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--webhook-listen=0.0.0.0:9443"), "{args:?}");
    assert!(args.contains(&"--listen=0.0.0.0:8443"), "{args:?}");

    let policy = find(&docs, "NetworkPolicy", "sigil-issuer");
    let rules = policy["spec"]["ingress"].as_array().expect("ingress rules");
    let rule_for = |port: u64| {
        rules
            .iter()
            .find(|r| r["ports"][0]["port"] == port)
            .unwrap_or_else(|| panic!("no ingress rule for {port}"))
    };
    assert!(rule_for(8443)["from"].is_null(), "the token port is public");
    assert_eq!(
        rule_for(9443)["from"],
        serde_json::json!([
            {"ipBlock": {"cidr": "10.0.0.0/24"}},
            {"ipBlock": {"cidr": "192.0.2.10/32"}},
        ])
    );

    // A NetworkPolicy that would shut the webhook out is refused by name.
    let closed = render(&["--set", "networkPolicy.enabled=true"]);
    assert!(
        !closed.success,
        "NetworkPolicy without apiServerCIDRs rendered"
    );
    assert!(
        format!("{}{}", closed.stdout, closed.stderr).contains("apiServerCIDRs"),
        "{closed:?}"
    );

    // Without the webhook: no port, no listener.
    let off = render(&["--set", "webhook.enabled=false"]).expect_success("helm template");
    let docs = documents(&off.stdout);
    let service = find(&docs, "Service", "sigil-issuer");
    assert_eq!(service["spec"]["ports"].as_array().map(Vec::len), Some(1));
    let container =
        &find(&docs, "Deployment", "sigil-issuer")["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["args"]
            .as_array()
            .expect("args")
            .iter()
            .any(|a| a == "--webhook-listen="),
        "{container}"
    );
}
