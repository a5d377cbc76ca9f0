//! `GET /.well-known/jwks.json` (RFC 7517): pre-serialized bytes from the
//! store, with an ETag and a `max-age` shorter than every ring's prePublish.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::state::App;

/// The published signing keys (RFC 7517), with an ETag.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    responses(
        (status = 200, description = "The key set", body = super::openapi::JwkSet, content_type = "application/jwk-set+json"),
        (status = 304, description = "Unchanged since the If-None-Match ETag"),
    )
)]
pub async fn jwks_endpoint(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let document = app.store.jwks();
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == document.etag || t == "*")
        });
    let mut response = if not_modified {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(Body::from(document.body.clone()))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    if let Ok(etag) = HeaderValue::from_str(&document.etag) {
        headers.insert(header::ETAG, etag);
    }
    if let Ok(cache) = HeaderValue::from_str(&format!("public, max-age={}", document.max_age)) {
        headers.insert(header::CACHE_CONTROL, cache);
    }
    response
}
