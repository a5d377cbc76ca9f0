//! The issuer's HTTP API (DESIGN.md §6): the public router (token,
//! introspection, JWKS, discovery) and the health router. Handlers read the
//! form, authenticate the client with [`client_auth`], and call protocol
//! functions that take data and return data.

pub mod client_auth;
pub mod discovery;
pub mod error;
pub mod form;
pub mod introspect;
pub mod jwks;
pub mod openapi;
pub mod ratelimit;
pub mod serve;
mod slots;
pub mod token;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};

use sigil_core::issuer_url::{
    INTROSPECTION_PATH, JWKS_PATH, OAUTH_METADATA_PATH, OPENID_CONFIGURATION_PATH, TOKEN_PATH,
};

use crate::state::App;

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
        )
        .route(
            &format!("{base}{}", openapi::OPENAPI_PATH),
            get(openapi_endpoint),
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

/// The OpenAPI document, serialized once at startup.
async fn openapi_endpoint(State(app): State<Arc<App>>) -> Response {
    let mut response = Response::new(Body::from(app.openapi.clone()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
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
    if app.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: caches not synced, no active signing key, or stopping\n",
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
