//! schemathesis (property-based API testing from the OpenAPI document the
//! issuer serves at /openapi.json) against a standalone issuer, for a short
//! time: no request it generates may get a server error, a status or
//! content type the document does not list, or a body that does not match
//! the documented schema. It authenticates as a real client (Basic), so
//! requests reach the grant and introspection logic, not only the
//! authentication failure path.
//!
//! One check is left out: `positive_data_acceptance` expects every
//! schema-valid request to succeed, but OAuth 2.0 answers 400 to requests
//! whose parameters are well-formed yet wrong together (two authentication
//! methods, a scope the client does not hold, RFC 6749 §5.2), which a JSON
//! schema cannot express.

mod issuer_support;

use issuer_support::*;

const MANIFESTS: &str = "\
apiVersion: sigil.dev/v1alpha1
kind: SigningKey
metadata: {name: default, namespace: sigil-system}
spec: {algorithm: ES256}
---
apiVersion: sigil.dev/v1alpha1
kind: OAuthResource
metadata: {name: orders, namespace: orders}
spec:
  audience: orders
  scopes: [{name: orders.read}, {name: orders.write}]
---
apiVersion: sigil.dev/v1alpha1
kind: OAuthClient
metadata: {name: caller, namespace: apps}
spec:
  scopes: [orders.read, orders.write]
  audiences: [orders]
";

const CLIENT_ID: &str = "caller.apps";

/// How long schemathesis generates requests (CI time, not coverage: its
/// example and coverage phases run first and take a few seconds).
const BUDGET_SECONDS: &str = "30";

#[tokio::test]
async fn schemathesis_finds_no_server_error_or_undocumented_response() {
    let requirements =
        sigil_tests::cluster::workspace_root().join("tests/schemathesis/requirements.txt");
    let bin = python_venv(&requirements).await;

    let standalone = Standalone::start("sigil-schemathesis", MANIFESTS).await;
    let secret = standalone.secret(CLIENT_ID);
    let schema = format!("{}/openapi.json", standalone.issuer.base_url);
    let output = tokio::process::Command::new(bin.join("schemathesis"))
        .arg("run")
        .arg(&schema)
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-time", BUDGET_SECONDS, "--workers", "1"])
        // Deterministic: a failure seen in CI reproduces with the same run.
        .args(["--seed", "1"])
        .args(["--auth", &format!("{CLIENT_ID}:{secret}")])
        .env("NO_COLOR", "1")
        // Its failure cache (.schemathesis/) goes to the scratch folder,
        // not into the repository.
        .current_dir(&standalone.scratch.0)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("running schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It really ran: every documented operation was tested.
    assert!(
        report.contains("Tested: 5"),
        "schemathesis did not test the 5 operations:\n{report}"
    );
    let log = std::fs::read_to_string(&standalone.issuer.log).unwrap_or_default();
    assert!(!log.contains(&secret), "the client secret reached the log");
}
