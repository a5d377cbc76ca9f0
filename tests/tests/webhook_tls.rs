//! The issuer's serving TLS made by the operator, with no cert-manager, on
//! the real API server: the Secrets, SANs that verify against the bundle,
//! every webhook's caBundle kept current and repaired after a hand edit,
//! renewal, and a CA rotation through its three phases with the overlap
//! between them; and with the issuer serving the webhook, a CA rotation
//! during which no pod admission fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sigil_tests::cluster::TestCluster;
use sigil_tests::eventually;
use sigil_tests::processes::{Process, free_addr};

const TLS_SECRET: &str = "sigil-issuer-tls";
const CA_SECRET: &str = "sigil-issuer-tls-ca";
const SERVICE: &str = "sigil-issuer";

/// A webhook configuration with two webhooks that never match a pod (a
/// namespace selector no namespace satisfies, or only `only_namespace`).
fn webhook_config(
    name: &str,
    url: &str,
    only_namespace: Option<&str>,
) -> MutatingWebhookConfiguration {
    let selector = match only_namespace {
        Some(ns) => json!({"matchLabels": {"kubernetes.io/metadata.name": ns}}),
        None => json!({"matchLabels": {"sigil.dev/never": "true"}}),
    };
    let webhook = |webhook_name: &str| {
        json!({
            "name": webhook_name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "clientConfig": {"url": url},
            "rules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["pods"],
            }],
            "namespaceSelector": selector,
            "matchConditions": [{
                "name": "asks-for-sigil-credentials",
                "expression": "has(object.metadata.annotations) && 'sigil.dev/client' in object.metadata.annotations",
            }],
        })
    };
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [webhook("pods.sigil.dev"), webhook("again.sigil.dev")],
    }))
    .expect("valid MutatingWebhookConfiguration")
}

fn start_operator(
    cluster: &TestCluster,
    ns: &str,
    webhook: &str,
    tls_flags: &[&str],
) -> (Process, std::net::SocketAddr) {
    let health = free_addr().expect("free port");
    let mut args = vec![
        "--issuer-url=https://sigil.example".to_owned(),
        format!("--namespace={ns}"),
        format!("--watch-namespaces={ns}"),
        format!("--health-listen={health}"),
        format!("--webhook-config={webhook}"),
        format!("--issuer-service={SERVICE}"),
        format!("--tls-secret={TLS_SECRET}"),
        "--tls-extra-sans=localhost,127.0.0.1".to_owned(),
        "--log-format=text".to_owned(),
    ];
    args.extend(tls_flags.iter().map(|f| (*f).to_owned()));
    let operator = Process::spawn(
        "operator",
        &sigil_tests::binary("operator"),
        &args,
        &[
            ("KUBECONFIG", cluster.kubeconfig().display().to_string()),
            ("RUST_LOG", "info,kube_lease_manager=warn".to_owned()),
        ],
        &cluster
            .control_plane
            .dir()
            .join("logs")
            .join(format!("{ns}-operator.log")),
    )
    .expect("starting the operator");
    (operator, health)
}

/// The issuer's Secret as the test reads it.
#[derive(Clone, Debug, PartialEq)]
struct Tls {
    cert: String,
    key: String,
    bundle: String,
}

fn field(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

async fn read_tls(secrets: &Api<Secret>) -> Option<Tls> {
    let secret = secrets.get_opt(TLS_SECRET).await.ok()??;
    Some(Tls {
        cert: field(&secret, "tls.crt")?,
        key: field(&secret, "tls.key")?,
        bundle: field(&secret, "ca.crt")?,
    })
}

/// Every webhook's caBundle.
async fn ca_bundles(webhooks: &Api<MutatingWebhookConfiguration>, name: &str) -> Vec<String> {
    let config = webhooks.get(name).await.expect("get webhook configuration");
    config
        .webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// The PEM blocks of a bundle.
fn pem_blocks(bundle: &str) -> Vec<String> {
    bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|b| b.contains("BEGIN CERTIFICATE"))
        .map(|b| format!("{b}\n"))
        .collect()
}

/// Runs `openssl` with `args`, the PEM `input` on stdin; (success, stdout+stderr).
fn openssl(args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing to openssl");
    let out = child.wait_with_output().expect("openssl output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A certificate's subject or issuer (`-subject` / `-issuer`), one line.
fn name_of(cert: &str, which: &str) -> String {
    let (ok, text) = openssl(&["x509", "-noout", which, "-nameopt", "RFC2253"], cert);
    assert!(ok, "openssl x509 {which}: {text}");
    text.trim()
        .split_once('=')
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default()
}

/// Whether `cert` verifies against `bundle` for `host` (`openssl verify`).
fn verifies(dir: &Path, cert: &str, bundle: &str, host: &str) -> (bool, String) {
    let bundle_file = dir.join(format!("bundle-{}.pem", rand::random::<u32>()));
    std::fs::write(&bundle_file, bundle).expect("writing the bundle");
    let file = bundle_file.display().to_string();
    let host_flag = if host.parse::<std::net::IpAddr>().is_ok() {
        "-verify_ip"
    } else {
        "-verify_hostname"
    };
    let result = openssl(
        &[
            "verify",
            "-purpose",
            "sslserver",
            host_flag,
            host,
            "-CAfile",
            &file,
        ],
        cert,
    );
    let _ = std::fs::remove_file(&bundle_file);
    result
}

fn scratch(cluster: &TestCluster, ns: &str) -> PathBuf {
    let dir = cluster.control_plane.dir().join(format!("{ns}-tls"));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[tokio::test]
async fn serving_certificate_and_ca_bundle_are_made_renewed_and_repaired() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("wtls").await;
    let dir = scratch(cluster, &ns);
    let webhook_name = format!("sigil-test-{ns}");
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    webhooks
        .create(
            &PostParams::default(),
            &webhook_config(&webhook_name, "https://127.0.0.1:9/webhooks/pods", None),
        )
        .await
        .expect("creating the webhook configuration");

    let started = Instant::now();
    let (mut operator, operator_health) = start_operator(
        cluster,
        &ns,
        &webhook_name,
        &[
            "--tls-cert-validity=30s",
            "--tls-ca-validity=1h",
            "--tls-overlap=3s",
        ],
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let tls = eventually(Duration::from_secs(30), "the issuer's TLS Secret", || {
        let secrets = secrets.clone();
        async move { read_tls(&secrets).await }
    })
    .await;
    let made_in = started.elapsed();
    operator.check_running().expect("operator running");

    // The Secret the issuer mounts: serving material and the bundle only.
    let secret = secrets.get(TLS_SECRET).await.expect("TLS Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .map(String::as_str),
        Some("sigil")
    );
    let keys: Vec<&String> = secret.data.as_ref().expect("data").keys().collect();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
    assert!(tls.key.contains("PRIVATE KEY"));
    // The CA key is in a separate Secret.
    let ca_secret = secrets.get(CA_SECRET).await.expect("CA Secret");
    assert_eq!(
        ca_secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .map(String::as_str),
        Some("sigil")
    );
    assert!(field(&ca_secret, "ca.key").is_some_and(|k| k.contains("PRIVATE KEY")));
    assert_eq!(
        field(&ca_secret, "ca.crt").as_deref(),
        Some(tls.bundle.as_str())
    );
    assert_eq!(pem_blocks(&tls.bundle).len(), 1);

    // SANs: the Service's names and the extra ones; each verifies.
    let (ok, sans) = openssl(&["x509", "-noout", "-ext", "subjectAltName"], &tls.cert);
    assert!(ok, "{sans}");
    for name in [
        SERVICE.to_owned(),
        format!("{SERVICE}.{ns}"),
        format!("{SERVICE}.{ns}.svc"),
        format!("{SERVICE}.{ns}.svc.cluster.local"),
        "localhost".to_owned(),
    ] {
        assert!(
            sans.contains(&format!("DNS:{name}")),
            "{name} missing from {sans}"
        );
        let (ok, out) = verifies(&dir, &tls.cert, &tls.bundle, &name);
        assert!(ok, "{name} does not verify: {out}");
    }
    assert!(sans.contains("IP Address:127.0.0.1"), "{sans}");
    assert!(verifies(&dir, &tls.cert, &tls.bundle, "127.0.0.1").0);
    assert!(!verifies(&dir, &tls.cert, &tls.bundle, "elsewhere.example").0);

    // Every webhook trusts exactly the bundle.
    let bundles = eventually(Duration::from_secs(10), "caBundle on every webhook", || {
        let webhooks = webhooks.clone();
        let (name, want) = (webhook_name.clone(), tls.bundle.clone());
        async move {
            let bundles = ca_bundles(&webhooks, &name).await;
            bundles.iter().all(|b| *b == want).then_some(bundles)
        }
    })
    .await;
    assert_eq!(bundles.len(), 2);

    // A hand-edited caBundle is repaired within seconds.
    let foreign = cluster.control_plane.ca_pem().to_owned();
    let edit = json!([
        {"op": "replace", "path": "/webhooks/1/clientConfig/caBundle",
         "value": base64_encode(&foreign)},
    ]);
    webhooks
        .patch(
            &webhook_name,
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(edit).expect("patch")),
        )
        .await
        .expect("editing the caBundle by hand");
    let edited = Instant::now();
    eventually(Duration::from_secs(10), "the caBundle repaired", || {
        let webhooks = webhooks.clone();
        let (name, want) = (webhook_name.clone(), tls.bundle.clone());
        async move {
            ca_bundles(&webhooks, &name)
                .await
                .iter()
                .all(|b| *b == want)
                .then_some(())
        }
    })
    .await;
    let repaired_in = edited.elapsed();
    assert!(
        repaired_in < Duration::from_secs(5),
        "caBundle repaired after {repaired_in:?}"
    );

    // A deleted Secret comes back at once, from the same CA.
    secrets
        .delete(TLS_SECRET, &DeleteParams::default())
        .await
        .expect("deleting the TLS Secret");
    let deleted = Instant::now();
    let recreated = eventually(Duration::from_secs(10), "the TLS Secret re-created", || {
        let secrets = secrets.clone();
        async move { read_tls(&secrets).await }
    })
    .await;
    let recreated_in = deleted.elapsed();
    assert!(
        recreated_in < Duration::from_secs(5),
        "re-created after {recreated_in:?}"
    );
    assert_eq!(recreated.bundle, tls.bundle, "same CA");
    assert_ne!(recreated.cert, tls.cert, "a new serving certificate");

    // Renewal at 2/3 of the 30 s (+3 s backdating) lifetime: ~19 s after
    // issue, from the same CA, before the old one expires.
    let issued = Instant::now();
    let renewed = eventually(
        Duration::from_secs(40),
        "the serving certificate renewed",
        || {
            let secrets = secrets.clone();
            let before = recreated.cert.clone();
            async move { read_tls(&secrets).await.filter(|t| t.cert != before) }
        },
    )
    .await;
    let renewed_after = issued.elapsed();
    assert!(
        renewed_after > Duration::from_secs(12) && renewed_after < Duration::from_secs(25),
        "renewed after {renewed_after:?}"
    );
    assert_eq!(renewed.bundle, tls.bundle);
    assert!(
        verifies(
            &dir,
            &renewed.cert,
            &renewed.bundle,
            &format!("{SERVICE}.{ns}.svc")
        )
        .0
    );

    // The expiry is exported for alerting.
    let metrics = reqwest::get(format!("http://{operator_health}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    for certificate in ["serving", "ca"] {
        let line = format!(
            "sigil_operator_webhook_tls_expiry_timestamp_seconds{{certificate=\"{certificate}\"}} "
        );
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    assert!(
        metrics.contains(r#"sigil_operator_reconciles_total{kind="WebhookTLS",result="success"}"#)
    );

    operator.check_running().expect("operator running");
    let log = std::fs::read_to_string(operator.log()).unwrap_or_default();
    assert!(!log.contains("PRIVATE KEY"), "a private key in the log");
    eprintln!(
        "TLS Secret made {made_in:?} after start; caBundle repaired {repaired_in:?} after a hand edit; \
         Secret re-created {recreated_in:?} after deletion; renewed {renewed_after:?} after issue (30 s validity)"
    );
    operator.stop().await;
    let _ = webhooks
        .delete(&webhook_name, &DeleteParams::default())
        .await;
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

/// One observation during a rotation.
#[derive(Debug)]
struct Seen {
    at: Duration,
    cas: Vec<String>,
    serving_issuer: String,
}

#[tokio::test]
async fn ca_rotation_goes_through_three_phases_an_overlap_apart() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("wtls-rot").await;
    let webhook_name = format!("sigil-test-{ns}");
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    webhooks
        .create(
            &PostParams::default(),
            &webhook_config(&webhook_name, "https://127.0.0.1:9/webhooks/pods", None),
        )
        .await
        .expect("creating the webhook configuration");
    // A 60 s CA (+6 s backdating) starts rotating ~38 s after it is made.
    let overlap = Duration::from_secs(8);
    let flags = [
        "--tls-cert-validity=1h",
        "--tls-ca-validity=60s",
        "--tls-overlap=8s",
        "--lease-duration=3",
    ];
    let (mut operator, _) = start_operator(cluster, &ns, &webhook_name, &flags);
    let mut restarted = false;
    let (mut next_since, mut retiring_since) = (None, None);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let first = eventually(Duration::from_secs(30), "the issuer's TLS Secret", || {
        let secrets = secrets.clone();
        async move { read_tls(&secrets).await }
    })
    .await;
    let first_ca = name_of(&first.bundle, "-subject");

    // Watch every 100 ms until the first CA has left the bundle.
    let started = Instant::now();
    let mut seen: Vec<Seen> = Vec::new();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "rotation incomplete: {seen:#?}"
        );
        operator.check_running().expect("operator running");
        // The webhook configuration first: it is written last, so a
        // serving certificate read after it must already verify with it.
        let bundles = ca_bundles(&webhooks, &webhook_name).await;
        let Some(tls) = read_tls(&secrets).await else {
            panic!("the TLS Secret disappeared");
        };
        let issuer = name_of(&tls.cert, "-issuer");
        for bundle in &bundles {
            let trusted: Vec<String> = pem_blocks(bundle)
                .iter()
                .map(|c| name_of(c, "-subject"))
                .collect();
            assert!(
                trusted.contains(&issuer),
                "at {:?} the webhook trusts {trusted:?} but the issuer serves a certificate from {issuer}",
                started.elapsed()
            );
        }
        let cas: Vec<String> = pem_blocks(&tls.bundle)
            .iter()
            .map(|c| name_of(c, "-subject"))
            .collect();
        assert!(
            cas.contains(&issuer),
            "the bundle {cas:?} lacks the serving certificate's CA {issuer}"
        );
        let changed = seen
            .last()
            .is_none_or(|last| last.cas != cas || last.serving_issuer != issuer);
        if changed {
            seen.push(Seen {
                at: started.elapsed(),
                cas: cas.clone(),
                serving_issuer: issuer.clone(),
            });
        }
        // The phase starts the operator recorded, by its own clock.
        if let Ok(ca_secret) = secrets.get(CA_SECRET).await {
            let annotations = ca_secret.metadata.annotations.unwrap_or_default();
            let stamp = |key: &str| {
                annotations
                    .get(key)
                    .and_then(|v| v.parse::<k8s_openapi::jiff::Timestamp>().ok())
            };
            next_since = next_since.or(stamp("sigil.dev/next-ca-since"));
            retiring_since = retiring_since.or(stamp("sigil.dev/retiring-ca-since"));
        }
        if cas.len() == 1 && cas[0] != first_ca {
            break;
        }
        // Mid-rotation, the operator crashes and a new process takes over
        // (a 3 s Lease): it must go on from the phase start stored in the
        // CA Secret, neither waiting again nor starting over.
        if changed && cas.len() == 2 && issuer == first_ca && !restarted {
            operator.kill().await;
            operator = start_operator(cluster, &ns, &webhook_name, &flags).0;
            restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(restarted, "the operator was not restarted mid-rotation");
    // The phases, in order: [A] from A → [A, B] from A → [A, B] from B → [B] from B.
    let phases: Vec<(usize, bool)> = seen
        .iter()
        .map(|s| (s.cas.len(), s.serving_issuer == first_ca))
        .collect();
    assert_eq!(
        phases,
        [(1, true), (2, true), (2, false), (1, false)],
        "unexpected sequence: {seen:#?}"
    );
    let trusted_for = seen[2].at - seen[1].at;
    let retired_after = seen[3].at - seen[2].at;
    // Polling every ~100 ms (plus openssl calls): a little slack below.
    let slack = Duration::from_secs(1);
    for (what, took) in [
        ("new CA trusted → serving from it", trusted_for),
        ("serving from new CA → old CA gone", retired_after),
    ] {
        assert!(
            took + slack >= overlap,
            "{what} after only {took:?} (overlap {overlap:?})"
        );
        assert!(
            took < overlap + Duration::from_secs(4),
            "{what} took {took:?} (overlap {overlap:?})"
        );
    }
    // Exactly, by the operator's clock: phase 2 began an overlap after
    // phase 1, even across the crash.
    let (Some(next_since), Some(retiring_since)) = (next_since, retiring_since) else {
        panic!("phase starts not recorded: {next_since:?} {retiring_since:?}");
    };
    let recorded = retiring_since.duration_since(next_since);
    assert!(
        recorded >= k8s_openapi::jiff::SignedDuration::try_from(overlap).expect("small"),
        "phase 2 began {recorded:?} after phase 1"
    );
    let ca_secret = secrets.get(CA_SECRET).await.expect("CA Secret");
    let annotations = ca_secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("sigil.dev/ca-rotation-phase")
            .map(String::as_str),
        Some("steady")
    );
    assert!(
        field(&ca_secret, "next-ca.crt").is_none()
            && field(&ca_secret, "retiring-ca.crt").is_none()
    );
    eprintln!(
        "CA rotation with an 8 s overlap (operator killed and replaced in phase 1): phase 1 started {:?} after the first check; new CA trusted {trusted_for:?} \
         before serving from it ({recorded:?} by the recorded phase starts); old CA left {retired_after:?} after that",
        seen[1].at
    );
    operator.stop().await;
    let _ = webhooks
        .delete(&webhook_name, &DeleteParams::default())
        .await;
}

/// Copies the serving certificate and key from the Secret to files, as the
/// kubelet does for a mounted Secret (atomically: write, then rename), every
/// 200 ms.
fn sync_files(secrets: Api<Secret>, dir: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<Tls> = None;
        loop {
            if let Some(tls) = read_tls(&secrets).await
                && last.as_ref() != Some(&tls)
            {
                for (name, text) in [("tls.key", &tls.key), ("tls.crt", &tls.cert)] {
                    let staged = dir.join(format!(".{name}.new"));
                    std::fs::write(&staged, text).expect("staging a TLS file");
                    std::fs::rename(&staged, dir.join(name)).expect("replacing a TLS file");
                }
                last = Some(tls);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

#[tokio::test]
async fn no_pod_admission_fails_during_a_ca_rotation() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("wtls-adm").await;
    let app = cluster.namespace("wtls-app").await;
    let dir = scratch(cluster, &ns);
    let logs = cluster.control_plane.dir().join("logs");

    // The default SigningKey the issuer needs to be ready.
    let keys: Api<sigil_crds::SigningKey> = Api::namespaced(client.clone(), &ns);
    keys.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "sigil.dev/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "default"}, "spec": {},
        }))
        .expect("SigningKey"),
    )
    .await
    .expect("creating the SigningKey");

    // Overlap 15 s: covers the 0.2 s file sync and the issuer's 10 s reload.
    // CA 90 s (the minimum, 6 overlaps): rotation starts ~57 s after it.
    let overlap = Duration::from_secs(15);
    let issuer_addr = free_addr().expect("free port");
    let issuer_url = format!("https://{issuer_addr}");
    // The webhook's own listener, with the same certificate files.
    let webhook_addr = free_addr().expect("free port");
    let mut args = vec![
        format!("--issuer-url={issuer_url}"),
        format!("--namespace={ns}"),
        format!("--watch-namespaces={app}"),
        format!("--health-listen={}", free_addr().expect("free port")),
        format!("--webhook-config=sigil-test-{ns}"),
        format!("--issuer-service={SERVICE}"),
        format!("--tls-secret={TLS_SECRET}"),
        "--tls-extra-sans=127.0.0.1".to_owned(),
        "--tls-ca-validity=90s".to_owned(),
        "--tls-overlap=15s".to_owned(),
        "--log-format=text".to_owned(),
    ];
    let mut operator = Process::spawn(
        "operator",
        &sigil_tests::binary("operator"),
        &args,
        &[("KUBECONFIG", cluster.kubeconfig().display().to_string())],
        &logs.join(format!("{ns}-operator.log")),
    )
    .expect("starting the operator");
    args.clear();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let first = eventually(Duration::from_secs(30), "the issuer's TLS Secret", || {
        let secrets = secrets.clone();
        async move { read_tls(&secrets).await }
    })
    .await;
    let ca_made = Instant::now();
    let first_ca = name_of(&first.bundle, "-subject");
    let sync = sync_files(secrets.clone(), dir.clone());
    eventually(Duration::from_secs(10), "the TLS files", || {
        let cert = dir.join("tls.crt");
        async move { cert.exists().then_some(()) }
    })
    .await;

    let health = free_addr().expect("free port");
    let mut issuer = Process::spawn(
        "issuer",
        &sigil_tests::binary("issuer"),
        &[
            format!("--issuer-url={issuer_url}"),
            format!("--listen={issuer_addr}"),
            format!("--webhook-listen={webhook_addr}"),
            format!("--health-listen={health}"),
            format!("--namespace={ns}"),
            format!("--tls-cert={}", dir.join("tls.crt").display()),
            format!("--tls-key={}", dir.join("tls.key").display()),
        ],
        &[
            ("KUBECONFIG", cluster.kubeconfig().display().to_string()),
            ("RUST_LOG", "info".to_owned()),
        ],
        &logs.join(format!("{ns}-issuer.log")),
    )
    .expect("starting the issuer");
    issuer
        .wait_http_ok(health, "/readyz", Duration::from_secs(60))
        .await
        .expect("issuer ready");

    // A Ready client for the pods to name.
    let clients: Api<sigil_crds::OAuthClient> = Api::namespaced(client.clone(), &app);
    clients
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "sigil.dev/v1alpha1", "kind": "OAuthClient",
                "metadata": {"name": "orders"},
                "spec": {"scopes": ["orders.read"], "audiences": ["orders"]},
            }))
            .expect("OAuthClient"),
        )
        .await
        .expect("creating the OAuthClient");
    eventually(Duration::from_secs(30), "the OAuthClient Ready", || {
        let clients = clients.clone();
        async move {
            let c = clients.get("orders").await.ok()?;
            c.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        }
    })
    .await;

    // The webhook, for the app namespace only, at the issuer.
    let webhook_name = format!("sigil-test-{ns}");
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    webhooks
        .create(
            &PostParams::default(),
            &webhook_config(
                &webhook_name,
                &format!("https://{webhook_addr}/webhooks/pods"),
                Some(&app),
            ),
        )
        .await
        .expect("creating the webhook configuration");
    eventually(Duration::from_secs(10), "caBundle on the webhooks", || {
        let webhooks = webhooks.clone();
        let (name, want) = (webhook_name.clone(), first.bundle.clone());
        async move {
            let bundles = ca_bundles(&webhooks, &name).await;
            bundles.iter().all(|b| *b == want).then_some(())
        }
    })
    .await;

    // Pods, one after another, until the first CA has left the bundle and
    // the issuer had time to reload after that.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &app);
    let mut created = 0u32;
    let mut failures: Vec<String> = Vec::new();
    let mut phases: Vec<(Duration, usize, bool)> = Vec::new();
    let mut done_at: Option<Instant> = None;
    let started = Instant::now();
    loop {
        operator.check_running().expect("operator running");
        issuer.check_running().expect("issuer running");
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": "rotation-",
                "annotations": {"sigil.dev/client": "orders"},
            },
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
        }))
        .expect("Pod");
        match pods.create(&PostParams::default(), &pod).await {
            Ok(pod) => {
                created += 1;
                let injected = pod
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key("sigil.dev/injected"));
                assert!(
                    injected,
                    "a pod was admitted without the webhook's mutation"
                );
            }
            Err(error) => failures.push(format!("{:?}: {error}", started.elapsed())),
        }
        if let Some(tls) = read_tls(&secrets).await {
            let cas = pem_blocks(&tls.bundle).len();
            let from_first = name_of(&tls.cert, "-issuer") == first_ca;
            if phases
                .last()
                .is_none_or(|(_, c, f)| (*c, *f) != (cas, from_first))
            {
                phases.push((started.elapsed(), cas, from_first));
            }
            if cas == 1 && !from_first && done_at.is_none() {
                done_at = Some(Instant::now());
            }
        }
        // After the old CA left: one more reload period of the issuer.
        if done_at.is_some_and(|at| at.elapsed() > Duration::from_secs(12)) {
            break;
        }
        assert!(
            ca_made.elapsed() < Duration::from_secs(150),
            "no complete rotation: {phases:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sync.abort();
    let reloads = std::fs::read_to_string(issuer.log())
        .unwrap_or_default()
        .matches("reloaded the TLS certificate")
        .count();
    eprintln!(
        "{created} pods admitted during a CA rotation (overlap {overlap:?}), {} failed; phases {phases:?}; \
         the issuer reloaded its certificate {reloads} times",
        failures.len()
    );
    assert!(failures.is_empty(), "failed admissions: {failures:#?}");
    let shape: Vec<(usize, bool)> = phases.iter().map(|(_, c, f)| (*c, *f)).collect();
    assert_eq!(shape, [(1, true), (2, true), (2, false), (1, false)]);
    assert!(reloads >= 2, "the issuer reloaded {reloads} times");
    assert!(created > 100, "only {created} pods");
    operator.stop().await;
    issuer.stop().await;
    let _ = webhooks
        .delete(&webhook_name, &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn the_charts_rbac_and_operator_args_manage_its_webhook_tls() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().await;
    let ns = cluster.namespace("wtls-chart").await;
    let chart = sigil_tests::cluster::workspace_root()
        .join("charts/sigil")
        .display()
        .to_string();
    let release = "wtls";
    // The chart's objects as `helm install` would create them, except that
    // its webhook gets a namespace selector nothing matches from the start:
    // no issuer runs behind its Service, and the other tests here create
    // pods that ask for credentials.
    let rendered = cluster
        .helm(&[
            "template",
            release,
            &chart,
            "-n",
            &ns,
            "--skip-tests",
            "--kube-version",
            "1.36.0",
        ])
        .expect_success("helm template")
        .stdout;
    let mut objects: Vec<serde_json::Value> = rendered
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .filter(|v| v["kind"].is_string())
        .collect();
    let webhook_name = format!("{release}-sigil");
    for object in &mut objects {
        if object["kind"] == "MutatingWebhookConfiguration" {
            object["webhooks"][0]["namespaceSelector"] =
                json!({"matchLabels": {"sigil.dev/never": "true"}});
        }
    }
    let list = dir_file(cluster, &ns, "chart.json");
    std::fs::write(
        &list,
        json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string(),
    )
    .expect("writing the chart's objects");
    cluster
        .kubectl(&["apply", "-n", &ns, "-f", &list.display().to_string()])
        .expect_success("kubectl apply of the chart's objects");
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());

    // The operator exactly as the chart's Deployment runs it (args, and
    // its ServiceAccount's RBAC), with a free health port.
    let deployment = objects
        .iter()
        .find(|v| {
            v["kind"] == "Deployment"
                && v["metadata"]["name"] == format!("{release}-sigil-operator")
        })
        .expect("the operator Deployment");
    let args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .map(|a| {
            if a.starts_with("--health-listen=") {
                format!("--health-listen={}", free_addr().expect("free port"))
            } else {
                a.to_owned()
            }
        })
        .collect();
    assert!(
        args.contains(&format!("--webhook-config={webhook_name}")),
        "{args:?}"
    );
    assert!(
        args.contains(&"--manage-webhook-tls=true".to_owned()),
        "{args:?}"
    );
    let kubeconfig = cluster.service_account_kubeconfig(&ns, &format!("{release}-sigil-operator"));
    let mut operator = Process::spawn(
        "operator",
        &sigil_tests::binary("operator"),
        &args,
        &[("KUBECONFIG", kubeconfig.display().to_string())],
        &cluster
            .control_plane
            .dir()
            .join("logs")
            .join(format!("{ns}-operator.log")),
    )
    .expect("starting the operator");

    // The Secret the chart's issuer mounts, for the chart's Service names.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let tls_secret = format!("{release}-sigil-issuer-tls");
    let tls = eventually(Duration::from_secs(30), "the chart's TLS Secret", || {
        let (secrets, name) = (secrets.clone(), tls_secret.clone());
        async move {
            let secret = secrets.get_opt(&name).await.ok()??;
            Some((field(&secret, "tls.crt")?, field(&secret, "ca.crt")?))
        }
    })
    .await;
    let dir = scratch(cluster, &ns);
    let host = format!("{release}-sigil-issuer.{ns}.svc");
    let (ok, out) = verifies(&dir, &tls.0, &tls.1, &host);
    assert!(ok, "{host}: {out}");
    assert!(
        secrets
            .get_opt(&format!("{tls_secret}-ca"))
            .await
            .expect("get")
            .is_some()
    );
    eventually(
        Duration::from_secs(10),
        "the chart webhook's caBundle",
        || {
            let webhooks = webhooks.clone();
            let (name, want) = (webhook_name.clone(), tls.1.clone());
            async move {
                let bundles = ca_bundles(&webhooks, &name).await;
                (!bundles.is_empty() && bundles.iter().all(|b| *b == want)).then_some(())
            }
        },
    )
    .await;

    operator.check_running().expect("operator running");
    let log = std::fs::read_to_string(operator.log()).unwrap_or_default();
    assert!(
        !log.contains("forbidden"),
        "a permission error:\n{}",
        operator.log_tail()
    );
    operator.stop().await;
    let _ = webhooks
        .delete(&webhook_name, &DeleteParams::default())
        .await;
}

fn dir_file(cluster: &TestCluster, ns: &str, name: &str) -> PathBuf {
    scratch(cluster, ns).join(name)
}
