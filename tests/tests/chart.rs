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

    // The issuer reads the two kinds everywhere, Secrets only at home.
    assert!(can(&issuer, "list", "oauthclients.sigil.dev", None));
    assert!(can(&issuer, "watch", "signingkeys.sigil.dev", None));
    assert!(can(&issuer, "get", "secrets", Some(&ns)));
    assert!(
        !can(&issuer, "get", "secrets", Some(&other)),
        "issuer can read another namespace's Secrets"
    );
    assert!(!can(&issuer, "list", "secrets", None));
    assert!(!can(&issuer, "create", "secrets", Some(&ns)));
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
    assert!(can(&operator, "create", "secrets", Some(&other)));
    assert!(can(&operator, "patch", "secrets", Some(&other)));
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
