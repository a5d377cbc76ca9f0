//! The verifier recipes of docs/verify/ (Go, Node, Python, Rust) run against
//! a real standalone issuer, so a recipe that stops working — a library
//! upgrade, a changed claim — fails here instead of in a user's service.
//! Each must accept a token for its audience and reject one for another
//! audience, one with a broken signature, and one typed `JWT` instead of
//! `at+jwt`. (The Java/Spring recipe is tests/interop/java, run by
//! interop_typ.rs.)

mod issuer_support;

use std::path::PathBuf;

use issuer_support::*;
use serde_json::Value;
use tokio::sync::OnceCell;

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
  scopes: [{name: orders.read}]
---
apiVersion: sigil.dev/v1alpha1
kind: OAuthResource
metadata: {name: billing, namespace: billing}
spec:
  audience: billing
  scopes: [{name: billing.read}]
---
apiVersion: sigil.dev/v1alpha1
kind: OAuthResource
metadata: {name: legacy, namespace: legacy}
spec:
  audience: legacy
  scopes: [{name: legacy.read}]
  token: {type: JWT}
---
apiVersion: sigil.dev/v1alpha1
kind: OAuthClient
metadata: {name: caller, namespace: apps}
spec:
  scopes: [orders.read, billing.read, legacy.read]
  audiences: [orders, billing, legacy]
";

const CLIENT_ID: &str = "caller.apps";

fn recipe_dir(language: &str) -> PathBuf {
    sigil_tests::cluster::workspace_root()
        .join("docs/verify")
        .join(language)
}

static GO: OnceCell<PathBuf> = OnceCell::const_new();
static NODE: OnceCell<()> = OnceCell::const_new();
static PYTHON: OnceCell<PathBuf> = OnceCell::const_new();

/// Builds docs/verify/go (go.mod and go.sum pin go-jose; never resolved).
async fn go_recipe() -> PathBuf {
    GO.get_or_init(|| async {
        let out = sigil_tests::cluster::workspace_root().join("target/interop/sigil-verify-go");
        let status = tokio::process::Command::new("go")
            .args(["build", "-mod=readonly", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(recipe_dir("go"))
            .status()
            .await
            .expect("running `go build` (is Go installed?)");
        assert!(status.success(), "building docs/verify/go failed");
        out
    })
    .await
    .clone()
}

/// `npm ci` in docs/verify/node (package-lock.json pins jose).
async fn node_recipe() {
    NODE.get_or_init(|| async {
        let status = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(recipe_dir("node"))
            .status()
            .await
            .expect("running `npm ci` (is Node installed?)");
        assert!(status.success(), "npm ci in docs/verify/node failed");
    })
    .await;
}

/// A virtualenv with docs/verify/python/requirements.txt; returns its python.
async fn python_recipe() -> PathBuf {
    PYTHON
        .get_or_init(|| async {
            python_venv(&recipe_dir("python").join("requirements.txt"))
                .await
                .join("python")
        })
        .await
        .clone()
}

struct Case<'a> {
    jwks_url: &'a str,
    issuer: &'a str,
    audience: &'a str,
    token: &'a str,
}

impl Case<'_> {
    fn args(&self) -> Vec<&str> {
        vec![
            "--jwks-url",
            self.jwks_url,
            "--issuer",
            self.issuer,
            "--audience",
            self.audience,
            "--token",
            self.token,
        ]
    }
}

/// Every recipe's verdict on `case`: (language, report).
async fn verdicts(case: &Case<'_>) -> Vec<(&'static str, Value)> {
    let mut go = tokio::process::Command::new(go_recipe().await);
    go.args(case.args().iter().map(|a| a.replacen("--", "-", 1)));
    node_recipe().await;
    let mut node = tokio::process::Command::new("node");
    node.current_dir(recipe_dir("node"))
        .arg("verify.mjs")
        .args(case.args());
    let mut python = tokio::process::Command::new(python_recipe().await);
    python
        .arg(recipe_dir("python").join("verify.py"))
        .args(case.args());
    let rust = match rust_recipe::fetch_jwks(case.jwks_url).await {
        Ok(jwks) => match rust_recipe::verify(case.token, &jwks, case.issuer, case.audience) {
            Ok(claims) => serde_json::json!({"ok": true, "claims": claims}),
            Err(error) => serde_json::json!({"ok": false, "error": error}),
        },
        Err(error) => serde_json::json!({"ok": false, "error": error.to_string()}),
    };
    vec![
        ("Go", run_json(go, "Go recipe").await),
        ("Node", run_json(node, "Node recipe").await),
        ("Python", run_json(python, "Python recipe").await),
        ("Rust", rust),
    ]
}

#[path = "../../docs/verify/rust/verify.rs"]
mod rust_recipe;

#[tokio::test]
async fn every_recipe_accepts_a_token_for_its_audience_and_rejects_the_others() {
    // Install the recipes' dependencies before the issuer starts.
    go_recipe().await;
    node_recipe().await;
    python_recipe().await;

    let standalone = Standalone::start("sigil-verify-recipes", MANIFESTS).await;
    let secret = standalone.secret(CLIENT_ID);
    let issuer = &standalone.issuer;
    let (iss, jwks) = (issuer.base_url.clone(), issuer.jwks_url());
    let token_for = |audience: &str| {
        let (url, secret, audience) = (issuer.token_url(), secret.clone(), audience.to_owned());
        async move {
            let form =
                format!("grant_type=client_credentials&audience={audience}&scope={audience}.read");
            access_token_basic(&url, CLIENT_ID, &secret, &form, &audience).await
        }
    };
    let orders = token_for("orders").await;
    let billing = token_for("billing").await;
    let legacy = token_for("legacy").await;
    // A broken signature: one character of the signature changed.
    let mut forged = orders.clone().into_bytes();
    let at = orders.rfind('.').expect("a JWS") + 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ASCII");

    let case = |audience, token| Case {
        jwks_url: &jwks,
        issuer: &iss,
        audience,
        token,
    };
    for (language, report) in verdicts(&case("orders", &orders)).await {
        assert_eq!(
            report["ok"], true,
            "{language} rejected a good token: {report}"
        );
        assert_eq!(report["claims"]["sub"], CLIENT_ID, "{language}: {report}");
        assert_eq!(
            report["claims"]["iss"],
            iss.as_str(),
            "{language}: {report}"
        );
        assert_eq!(
            report["claims"]["scope"], "orders.read",
            "{language}: {report}"
        );
    }
    let refused = [
        ("another API's token", case("orders", &billing)),
        ("a broken signature", case("orders", &forged)),
        ("typ JWT, not at+jwt", case("legacy", &legacy)),
        (
            "the wrong issuer",
            Case {
                issuer: "https://elsewhere.example",
                ..case("orders", &orders)
            },
        ),
    ];
    for (what, case) in &refused {
        for (language, report) in verdicts(case).await {
            assert_eq!(report["ok"], false, "{language} accepted {what}: {report}");
            assert!(
                report["error"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "{language} gave no reason for refusing {what}: {report}"
            );
        }
    }
}
