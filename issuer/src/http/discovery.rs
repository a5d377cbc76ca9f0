//! OIDC Discovery 1.0 and RFC 8414 metadata, serialized once from the
//! configured issuer URL.

use sigil_core::IssuerUrl;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;

use crate::http::client_auth::ASSERTION_ALGORITHMS;
use crate::state::App;

/// `federated_jwt`: a Kubernetes ServiceAccount token as the client
/// assertion (`crate::federation`); advertised in cluster mode only.
pub const AUTH_METHODS: [&str; 4] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "federated_jwt",
];
/// Algorithms accepted for `private_key_jwt` assertions: the one list
/// assertion checking uses.
pub fn assertion_algorithms() -> Vec<&'static str> {
    ASSERTION_ALGORITHMS.iter().map(|(_, name)| *name).collect()
}
/// Algorithms Sigil signs access tokens with (a `SigningKey` picks one).
pub const SIGNING_ALGORITHMS: [&str; 7] = [
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "EdDSA",
];

/// The metadata document (one for both well-known paths: RFC 8414 §3 and
/// OIDC Discovery §4 share their members here). `federated`: whether
/// `federated_jwt` works here (cluster mode).
pub fn metadata_json(issuer: &IssuerUrl, scopes_supported: &[String], federated: bool) -> Bytes {
    let assertion_algorithms = assertion_algorithms();
    let auth_methods: Vec<&str> = AUTH_METHODS
        .iter()
        .copied()
        .filter(|m| federated || *m != "federated_jwt")
        .collect();
    let mut document = serde_json::json!({
        "issuer": issuer.as_str(),
        "token_endpoint": issuer.token_endpoint(),
        "jwks_uri": issuer.jwks_uri(),
        "introspection_endpoint": issuer.introspection_endpoint(),
        "grant_types_supported": ["client_credentials"],
        // REQUIRED by RFC 8414 §2 and OIDC Discovery, and authlib's
        // metadata validation refuses an empty list. Sigil has no
        // authorization endpoint; "none" (OAuth 2.0 Multiple Response Type
        // Encoding Practices §4) is the registered value that hands out no
        // credential there, so it advertises no flow Sigil lacks (as
        // "code" or "token" would).
        "response_types_supported": ["none"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": assertion_algorithms,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_signing_alg_values_supported": assertion_algorithms,
        // OIDC Discovery requires these even without ID tokens.
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": SIGNING_ALGORITHMS,
        "access_token_signing_alg_values_supported": SIGNING_ALGORITHMS,
    });
    // RFC 8414 §2: RECOMMENDED; the scopes the OAuthResources declare.
    if !scopes_supported.is_empty() {
        document["scopes_supported"] = scopes_supported.into();
    }
    Bytes::from(document.to_string())
}

/// Authorization server metadata (RFC 8414; also served as OpenID Connect
/// discovery).
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    responses((status = 200, description = "The metadata", body = super::openapi::Metadata))
)]
pub async fn metadata_endpoint(State(app): State<Arc<App>>) -> Response {
    // Serialized once per change of the OAuthResources.
    let audiences = app.store.audiences();
    let body = if audiences.scopes_supported.is_empty() {
        app.metadata.clone()
    } else {
        audiences
            .metadata
            .get_or_init(|| {
                metadata_json(
                    &app.issuer_url,
                    &audiences.scopes_supported,
                    app.federation.is_some(),
                )
            })
            .clone()
    };
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Short: scopes_supported follows the OAuthResources.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}
