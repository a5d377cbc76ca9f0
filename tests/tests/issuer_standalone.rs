//! The issuer in standalone mode (DESIGN.md §8): the seed example's rules
//! over real HTTP, tokens verified by Go (x/oauth2 clientcredentials +
//! go-jose) and Node (jose createRemoteJWKSet + jwtVerify), and two key
//! rotations under continuous verification with zero failures.

mod issuer_support;

use std::time::Duration;

use issuer_support::*;

const SEED: &str = "\
apiVersion: sigil.dev/v1alpha1
kind: OAuthClient
metadata: {name: task-service, namespace: tasks}
spec:
  displayName: Task Service
  scopes: [event.view, event.create, file.view]
  audiences: [event, file]
";

const TASK_ID: &str = "task-service.tasks";

async fn standalone(manifests: &str) -> Standalone {
    let started = Standalone::start("sigil-standalone", manifests).await;
    std::fs::write(started.scratch.0.join("secret"), started.secret(TASK_ID)).expect("secret file");
    started
}

#[tokio::test]
async fn standalone_issuer_serves_the_seed_example() {
    let s = standalone(SEED).await;
    let url = s.issuer.token_url();

    // The secrets file is private and the log names the id, not the secret.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.scratch.0.join("secrets.json"))
        .expect("secrets file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let log = s.issuer.log_text();
    assert!(log.contains(TASK_ID), "{log}");
    assert!(!log.contains(&s.secret(TASK_ID)));

    for reply in [
        token_basic(
            &url,
            TASK_ID,
            &s.secret(TASK_ID),
            "grant_type=client_credentials",
        )
        .await,
        token_post(
            &url,
            TASK_ID,
            &s.secret(TASK_ID),
            "grant_type=client_credentials",
        )
        .await,
    ] {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        let body = reply.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(body["scope"], "event.view event.create file.view");
    }

    let narrowed = token_basic(
        &url,
        TASK_ID,
        &s.secret(TASK_ID),
        "grant_type=client_credentials&scope=event.create&audience=event",
    )
    .await;
    assert_eq!(narrowed.status, 200);
    assert_eq!(narrowed.json()["scope"], "event.create");
    let claims = decode_jwt_claims(narrowed.json()["access_token"].as_str().expect("token"));
    assert_eq!(claims["aud"], "event");
    assert_eq!(claims["scp"], serde_json::json!(["event.create"]));
    assert_eq!(claims["iss"], s.issuer.base_url);

    let bad_scope = token_basic(
        &url,
        TASK_ID,
        &s.secret(TASK_ID),
        "grant_type=client_credentials&scope=file.delete",
    )
    .await;
    assert_eq!(bad_scope.status, 400);
    assert_eq!(bad_scope.json()["error"], "invalid_scope");

    let bad_audience = token_basic(
        &url,
        TASK_ID,
        &s.secret(TASK_ID),
        "grant_type=client_credentials&audience=payments",
    )
    .await;
    assert_eq!(bad_audience.status, 400);
    assert_eq!(bad_audience.json()["error"], "invalid_target");

    let wrong = token_basic(
        &url,
        TASK_ID,
        "not-the-secret",
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_client");
    assert!(
        wrong
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic"))
    );

    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let doc = get(&format!("{}{path}", s.issuer.base_url))
            .await
            .expect("discovery")
            .json();
        assert_eq!(doc["issuer"], s.issuer.base_url);
        assert_eq!(doc["token_endpoint"], url);
    }
    let metrics = get(&format!("{}/metrics", s.issuer.health_url))
        .await
        .expect("metrics");
    assert!(
        metrics
            .body
            .contains("sigil_issuer_token_requests_total{result=\"success\"} 3"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("sigil_issuer_clients 1"));
}

#[tokio::test]
async fn go_and_node_libraries_verify_standalone_tokens() {
    let s = standalone(SEED).await;
    let (token_url, jwks_url) = (s.issuer.token_url(), s.issuer.jwks_url());
    let secret_file = s.scratch.0.join("secret");
    let run = |auth: &'static str, audience: &'static str, scope: &'static str| VerifyRun {
        token_url: &token_url,
        jwks_url: &jwks_url,
        issuer: &s.issuer.base_url,
        client_id: TASK_ID,
        secret_file: &secret_file,
        audience,
        scope,
        auth,
        duration: Duration::ZERO,
        interval: Duration::from_millis(50),
        jwks_refresh: Duration::ZERO,
    };
    // x/oauth2 with its auto-detection (Basic first), and each style forced.
    for style in ["auto", "header", "params"] {
        let report = run_go(&run(style, "event", "event.create")).await;
        assert_eq!(report["verified"], 1, "Go {style}: {report}");
        assert_eq!(report["failures"], 0, "Go {style}: {report}");
        assert_eq!(report["scope"], "event.create");
        assert_eq!(report["audience"], serde_json::json!(["event"]));
    }
    for auth in ["basic", "post"] {
        let report = run_node(&run(auth, "file", "")).await;
        assert_eq!(report["verified"], 1, "Node {auth}: {report}");
        assert_eq!(report["failures"], 0, "Node {auth}: {report}");
        assert_eq!(report["audience"], "file", "one audience is a string");
    }
}

/// Two rotations while Go and Node request and verify continuously, each
/// caching the JWKS and refreshing it at most every 0.8 × prePublish.
#[tokio::test]
async fn verifiers_see_no_failure_across_two_key_rotations() {
    let manifests = format!(
        "{SEED}---\napiVersion: sigil.dev/v1alpha1\nkind: SigningKey\nmetadata: {{name: default, namespace: sigil-system}}\nspec:\n  algorithm: ES256\n  rotationInterval: 7s\n  prePublish: 3s\n  retireAfter: 10s\n"
    );
    // Build/install the verifiers first: the rotation clock starts with the issuer.
    go_verifier().await;
    node_ready().await;
    let s = standalone(&manifests).await;
    let (token_url, jwks_url) = (s.issuer.token_url(), s.issuer.jwks_url());
    let secret_file = s.scratch.0.join("secret");
    let run = |auth: &'static str| VerifyRun {
        token_url: &token_url,
        jwks_url: &jwks_url,
        issuer: &s.issuer.base_url,
        client_id: TASK_ID,
        secret_file: &secret_file,
        audience: "event",
        scope: "",
        auth,
        // Starts right after the first key: rotations at ~7 s and ~14 s.
        duration: Duration::from_millis(17_500),
        interval: Duration::from_millis(50),
        jwks_refresh: Duration::from_millis(2_400),
    };
    let (go_run, node_run) = (run("header"), run("basic"));
    let (go, node) = tokio::join!(run_go(&go_run), run_node(&node_run));
    for (name, report) in [("Go", &go), ("Node", &node)] {
        assert_eq!(report["failures"], 0, "{name}: {report}");
        let verified = report["verified"].as_u64().expect("count");
        assert!(
            verified > 50,
            "{name} verified only {verified} tokens: {report}"
        );
        let kids = report["kids"].as_array().expect("kids").len();
        assert!(
            kids >= 3,
            "{name} saw {kids} signing keys, expected two rotations: {report}"
        );
    }
    eprintln!("rotation continuity: Go {go}\nNode {node}");
}

/// HTTPS with a certificate from files (as the chart mounts it), over
/// HTTP/1.1 and HTTP/2, checked with curl against the CA.
#[tokio::test]
async fn standalone_issuer_serves_https() {
    let scratch = Scratch::new("sigil-tls");
    let pki = sigil_tests::pki::Pki::new().expect("a test CA");
    let pair = pki
        .serving_cert("sigil-issuer")
        .expect("a serving certificate");
    let (cert, key, ca) = (
        scratch.0.join("tls.crt"),
        scratch.0.join("tls.key"),
        scratch.0.join("ca.crt"),
    );
    std::fs::write(&cert, &pair.cert_pem).expect("cert");
    std::fs::write(&key, &pair.key_pem).expect("key");
    std::fs::write(&ca, &pki.ca_pem).expect("ca");
    let manifests = scratch.0.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    std::fs::write(manifests.join("seed.yaml"), SEED).expect("manifest");
    let secrets = scratch.0.join("secrets.json");
    let path = |p: &std::path::Path| p.to_str().expect("utf8").to_owned();
    let mut issuer = IssuerProcess::start_with_scheme(
        "https",
        &[
            "--manifests",
            &path(&manifests),
            "--secrets",
            &path(&secrets),
            "--tls-cert",
            &path(&cert),
            "--tls-key",
            &path(&key),
        ],
        &[],
        &scratch.0.join("issuer.log"),
    );
    issuer.wait_ready(Duration::from_secs(20)).await;
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&secrets).expect("secrets")).expect("json");
    let secret = file[TASK_ID].as_str().expect("secret");
    for version in ["--http1.1", "--http2"] {
        let output = tokio::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", version, "--cacert", &path(&ca)])
            .args(["-u", &format!("{TASK_ID}:{secret}")])
            .args(["-d", "grant_type=client_credentials&audience=event"])
            .arg(issuer.token_url())
            .output()
            .await
            .expect("running curl");
        assert!(
            output.status.success(),
            "curl {version}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let body: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        assert_eq!(body["token_type"], "Bearer", "{version}");
        let claims = decode_jwt_claims(body["access_token"].as_str().expect("token"));
        assert_eq!(claims["iss"], issuer.base_url);
    }
}
