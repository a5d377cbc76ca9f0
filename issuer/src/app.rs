//! The issuer's shared state, its two routers (API and health), and the
//! HTTP(S) servers that run them.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;

use sigil_core::IssuerUrl;
use sigil_core::issuer_url::{
    INTROSPECTION_PATH, JWKS_PATH, OAUTH_METADATA_PATH, OPENID_CONFIGURATION_PATH, TOKEN_PATH,
};

use crate::metrics::Metrics;
use crate::ratelimit::FailedAuthLimiter;
use crate::store::{Store, TokenTyp};
use crate::token::ReplayCache;
use crate::{discovery, introspect, jwks, token};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load the TLS certificate {cert} / key {key}: {reason}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("the server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Deployment-wide settings of the HTTP API.
#[derive(Clone, Debug)]
pub struct Settings {
    pub issuer_url: IssuerUrl,
    pub token_typ: TokenTyp,
    /// Failed client authentications allowed per minute, per source
    /// address and per client id.
    pub failed_auth_per_minute: NonZeroU32,
}

pub struct App {
    pub store: Arc<Store>,
    pub issuer: String,
    pub token_endpoint: String,
    pub introspection_endpoint: String,
    /// The path part of the issuer URL ("" or "/tenant"); endpoints live
    /// under it.
    pub base_path: String,
    pub token_typ: TokenTyp,
    pub limiter: FailedAuthLimiter,
    pub replay: ReplayCache,
    pub metrics: Arc<Metrics>,
    pub metadata: Bytes,
}

impl App {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        settings: &Settings,
    ) -> Result<Self, ServeError> {
        let url = &settings.issuer_url;
        Ok(App {
            store,
            token_endpoint: url.token_endpoint(),
            introspection_endpoint: url.introspection_endpoint(),
            metadata: discovery::metadata_json(url),
            issuer: url.to_string(),
            base_path: url.path().to_owned(),
            token_typ: settings.token_typ,
            limiter: FailedAuthLimiter::new(settings.failed_auth_per_minute),
            replay: ReplayCache::default(),
            metrics,
        })
    }

    /// Refreshes gauges from the store (called before each scrape).
    pub fn update_gauges(&self) {
        self.metrics.clients.set(self.store.client_count() as i64);
        self.metrics
            .published_keys
            .set(self.store.published_key_count() as i64);
    }
}

/// The public API (DESIGN.md §6), under the issuer URL's path.
pub fn api_router(app: Arc<App>) -> Router {
    let base = app.base_path.clone();
    let mut router = Router::new()
        .route(&format!("{base}{TOKEN_PATH}"), post(token::token_endpoint))
        .route(
            &format!("{base}{INTROSPECTION_PATH}"),
            post(introspect::introspect_endpoint),
        )
        .route(&format!("{base}{JWKS_PATH}"), get(jwks::jwks_endpoint))
        .route(
            &format!("{base}{OPENID_CONFIGURATION_PATH}"),
            get(discovery::metadata_endpoint),
        )
        .route(
            &format!("{base}{OAUTH_METADATA_PATH}"),
            get(discovery::metadata_endpoint),
        );
    if !base.is_empty() {
        // RFC 8414 §3.1: the well-known segment goes before the path.
        router = router.route(
            &format!("{OAUTH_METADATA_PATH}{base}"),
            get(discovery::metadata_endpoint),
        );
    }
    router.with_state(app)
}

/// `/healthz`, `/readyz`, `/metrics` (DESIGN.md §6, separate port).
pub fn health_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(app)
}

async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    if app.store.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: caches not synced or no active signing key\n",
        )
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.update_gauges();
    let mut response = Response::new(Body::from(app.metrics.encode()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Periodic cleanup of rate-limit state.
pub fn spawn_housekeeping(app: Arc<App>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            app.limiter.housekeeping();
        }
    });
}

/// Serves `router` on `addr` over plain HTTP until the process ends.
pub async fn serve_plain(addr: SocketAddr, router: Router) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    serve_listener(listener, router).await
}

pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    router: Router,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    tracing::info!(%addr, "listening (http)");
    // Small JSON answers: send them at once instead of waiting for an ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(|source| ServeError::Serve { addr, source })
}

fn load_tls(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_error = |reason: String| ServeError::Tls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(e.to_string()))?;
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| tls_error(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Serves `router` over TLS, reloading the certificate when its files
/// change (the operator renews it).
pub async fn serve_tls(
    addr: SocketAddr,
    router: Router,
    cert: PathBuf,
    key: PathBuf,
) -> Result<(), ServeError> {
    let config =
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(load_tls(&cert, &key)?));
    let reload = config.clone();
    tokio::spawn(async move {
        let mut seen = (modified(&cert), modified(&key));
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            let now = (modified(&cert), modified(&key));
            if now == seen {
                continue;
            }
            match load_tls(&cert, &key) {
                Ok(fresh) => {
                    reload.reload_from_config(Arc::new(fresh));
                    tracing::info!(cert = %cert.display(), "reloaded the TLS certificate");
                    seen = now;
                }
                Err(error) => tracing::warn!(%error, "keeping the previous TLS certificate"),
            }
        }
    });
    tracing::info!(%addr, "listening (https)");
    axum_server::bind_rustls(addr, config)
        .serve(router.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .map_err(|source| ServeError::Serve { addr, source })
}
