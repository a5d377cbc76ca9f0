//! Test support for Sigil: the local control plane (`cluster`), its PKI, and
//! helpers shared by the end-to-end tests in `tests/tests/`. Nothing that
//! ships may depend on this crate.

pub mod audit;
pub mod cluster;
pub mod install;
pub mod node;
pub mod pki;
pub mod processes;
pub mod soak;

use std::path::PathBuf;

/// Path of a workspace binary (`operator`, `issuer`, …) built by
/// `cargo build --workspace --bins` (the test script does that first: a
/// running `cargo test` holds the build lock, so tests cannot build it).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cluster::workspace_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (hack/test.sh does)",
        path.display()
    );
    path
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after
/// `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Creates a Secret named `name` that is not Sigil's (no owner, a
/// `client_secret` of "mine", `labels`), as the tests of Sigil's refusal
/// to take over someone else's Secret put in its way.
pub async fn create_foreign_secret(
    secrets: &kube::Api<k8s_openapi::api::core::v1::Secret>,
    name: &str,
    labels: &[(&str, &str)],
) -> k8s_openapi::api::core::v1::Secret {
    let mut foreign = k8s_openapi::api::core::v1::Secret::default();
    foreign.metadata.name = Some(name.into());
    if !labels.is_empty() {
        foreign.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
    }
    foreign.string_data = Some([("client_secret".to_owned(), "mine".to_owned())].into());
    secrets
        .create(&kube::api::PostParams::default(), &foreign)
        .await
        .expect("creating the foreign Secret")
}
