//! The pod admission webhook (`inject::admission::admit`, what
//! `POST /webhooks/pods` runs) on arbitrary bodies, with one Ready and one
//! not-Ready OAuthClient in namespace `tasks`.
//!
//! Invariants: every answer serializes; it carries the request's `uid`; a
//! patch is base64 of a JSON array (a JSON Patch).
#![no_main]

use std::sync::{Arc, LazyLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use sigil_crds::OAuthClient;
use sigil_issuer::inject::admission::{AdmissionState, ClientDirectory, admit};
use sigil_issuer::inject::mutate::InjectionConfig;
use sigil_issuer::metrics::Metrics;

fn client(name: &str, status: &str) -> OAuthClient {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "sigil.dev/v1alpha1",
        "kind": "OAuthClient",
        "metadata": { "name": name, "namespace": "tasks" },
        "spec": { "scopes": ["a"], "audiences": ["b"] },
        "status": { "conditions": [{
            "type": "Ready", "status": status, "reason": "Fuzz", "message": "fuzz",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }] },
    }))
    .expect("client")
}

static STATE: LazyLock<AdmissionState> = LazyLock::new(|| {
    let directory = Arc::new(ClientDirectory::default());
    directory.replace(&[client("web", "True"), client("down", "False")]);
    AdmissionState {
        directory,
        config: InjectionConfig {
            issuer_url: "https://sigil.example".into(),
            token_url: "https://sigil.example/oauth2/token".into(),
            agent_image: "sigil-issuer:fuzz".into(),
            agent_image_pull_policy: None,
            agent_resources: None,
            agent_health_port: 8099,
        },
        metrics: Arc::new(Metrics::new()),
    }
});

fuzz_target!(|data: &[u8]| {
    let Ok(review) = admit(&STATE, data) else {
        return;
    };
    let answer = serde_json::to_value(&review).expect("the answer serializes");
    let response = &answer["response"];
    assert!(response.is_object(), "no response in {answer}");
    if let Ok(input) = serde_json::from_slice::<serde_json::Value>(data)
        && let Some(uid) = input["request"]["uid"].as_str()
    {
        assert_eq!(response["uid"].as_str(), Some(uid), "uid not echoed");
    }
    if let Some(patch) = response.get("patch").and_then(|p| p.as_str()) {
        let bytes = STANDARD.decode(patch).expect("patch is base64");
        let patch: serde_json::Value = serde_json::from_slice(&bytes).expect("patch is JSON");
        assert!(patch.is_array(), "patch is not a JSON Patch: {patch}");
    }
});
