//! `/healthz`, `/readyz` and `/metrics` on `--health-listen`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the probes report.
#[derive(Default)]
pub struct Health {
    /// This replica holds the Lease.
    pub leading: AtomicBool,
    /// Kinds whose watch has listed everything once (as the leader).
    listed: Mutex<BTreeSet<&'static str>>,
}

/// The kinds the leader watches.
const WATCHED_KINDS: [&str; 2] = ["OAuthClient", "SigningKey"];

impl Health {
    /// Ready when standing by, or when leading with synced caches.
    pub fn ready(&self) -> bool {
        if !self.leading.load(Ordering::Acquire) {
            return true;
        }
        let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        WATCHED_KINDS.iter().all(|kind| listed.contains(kind))
    }

    /// A watch of `kind` has listed every object (its cache is synced).
    pub fn mark_listed(&self, kind: &'static str) {
        let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        if listed.insert(kind) {
            tracing::info!(kind, "cache synced");
        }
    }

    pub fn reset_listed(&self) {
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

pub fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { health, metrics })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    match state.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Binds the listener now (so a bad address fails at start) and serves in
/// the background.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /healthz and /metrics: {e}"))?;
    let local = listener.local_addr()?;
    let app = router(health, metrics);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "health server stopped");
        }
    });
    Ok(local)
}
