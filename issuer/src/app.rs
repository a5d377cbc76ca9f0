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

use crate::metrics::Metrics;
use crate::ratelimit::FailedAuthLimiter;
use crate::store::{Store, TokenTyp};
use crate::token::ReplayCache;
use crate::{discovery, introspect, jwks, token};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "the issuer URL {0:?} must be an absolute http(s) URL without a trailing '/', query or fragment"
    )]
    IssuerUrl(String),
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
    pub issuer_url: String,
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

/// The path of an issuer URL, or an error if it is not a plain absolute
/// http(s) URL.
pub fn issuer_path(issuer_url: &str) -> Result<String, ServeError> {
    let bad = || ServeError::IssuerUrl(issuer_url.to_owned());
    let rest = issuer_url
        .strip_prefix("https://")
        .or_else(|| issuer_url.strip_prefix("http://"))
        .ok_or_else(bad)?;
    if issuer_url.ends_with('/') || issuer_url.contains(['?', '#', ' ']) {
        return Err(bad());
    }
    let (host, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(path.to_owned())
}

impl App {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        settings: &Settings,
    ) -> Result<Self, ServeError> {
        let base_path = issuer_path(&settings.issuer_url)?;
        let issuer = settings.issuer_url.clone();
        Ok(App {
            store,
            token_endpoint: format!("{issuer}/oauth2/token"),
            introspection_endpoint: format!("{issuer}/oauth2/introspect"),
            metadata: discovery::metadata_json(&issuer),
            issuer,
            base_path,
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
        .route(&format!("{base}/oauth2/token"), post(token::token_endpoint))
        .route(
            &format!("{base}/oauth2/introspect"),
            post(introspect::introspect_endpoint),
        )
        .route(
            &format!("{base}/.well-known/jwks.json"),
            get(jwks::jwks_endpoint),
        )
        .route(
            &format!("{base}/.well-known/openid-configuration"),
            get(discovery::metadata_endpoint),
        )
        .route(
            &format!("{base}/.well-known/oauth-authorization-server"),
            get(discovery::metadata_endpoint),
        );
    if !base.is_empty() {
        // RFC 8414 §3.1: the well-known segment goes before the path.
        router = router.route(
            &format!("/.well-known/oauth-authorization-server{base}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_url_path_is_extracted() {
        assert_eq!(issuer_path("https://sigil.example").unwrap(), "");
        assert_eq!(issuer_path("http://127.0.0.1:8080").unwrap(), "");
        assert_eq!(
            issuer_path("https://h.example/tenant/a").unwrap(),
            "/tenant/a"
        );
        assert!(issuer_path("https://h.example/").is_err());
        assert!(issuer_path("ftp://h.example").is_err());
        assert!(issuer_path("https://").is_err());
    }
}
