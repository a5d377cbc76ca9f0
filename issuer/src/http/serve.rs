//! Running a router over plain HTTP or TLS (certificate reloaded when its
//! files change).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;

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
