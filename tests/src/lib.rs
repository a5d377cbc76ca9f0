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
