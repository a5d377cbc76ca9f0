//! The stop signal every Sigil binary obeys: SIGTERM (what the kubelet
//! sends) or SIGINT (Ctrl-C). Handled explicitly, because a container's main
//! process is PID 1, for which the kernel ignores a SIGTERM that has no
//! handler: without this, every pod would wait out its whole grace period
//! and then be killed mid-request.

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
