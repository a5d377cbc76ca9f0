//! Verifying a Sigil access token in Rust with `jsonwebtoken` (aws-lc-rs
//! backend): the checks a resource server needs (docs/verify/README.md).
//! tests/tests/verify_recipes.rs compiles this file and runs it against a
//! real issuer.
//!
//! Cargo.toml: `jsonwebtoken = { version = "11", default-features = false,
//! features = ["aws_lc_rs"] }`, `serde_json`, and an HTTP client for the JWKS
//! (here `reqwest` with its `json` feature).

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};

/// Only the asymmetric algorithms Sigil signs with: never HS* or none.
const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

/// Reads the issuer's key set. A service caches it and fetches it again
/// when a token names a kid it does not hold (keys rotate).
pub async fn fetch_jwks(jwks_url: &str) -> Result<JwkSet, reqwest::Error> {
    reqwest::get(jwks_url)
        .await?
        .error_for_status()?
        .json()
        .await
}

/// The token's claims, if it is a Sigil access token for `audience`.
pub fn verify(
    token: &str,
    jwks: &JwkSet,
    issuer: &str,
    audience: &str,
) -> Result<serde_json::Value, String> {
    let header = decode_header(token).map_err(|e| e.to_string())?;
    // RFC 9068: access tokens are typed at+jwt (unless the API's
    // OAuthResource asks for typ JWT; then check that instead).
    if header.typ.as_deref() != Some("at+jwt") {
        return Err("typ is not at+jwt".into());
    }
    if !ALGORITHMS.contains(&header.alg) {
        return Err(format!("algorithm {:?} is not accepted", header.alg));
    }
    let kid = header.kid.as_deref().ok_or("the token names no kid")?;
    let jwk = jwks
        .find(kid)
        .ok_or_else(|| format!("unknown kid {kid}: fetch the JWKS again"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    // One algorithm: the header's, already checked against the allow-list.
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[issuer]); // exactly the issuer URL
    validation.set_audience(&[audience]); // this API's audience must be in aud
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 30;
    // claims["scope"] (space-separated) and claims["client_id"] are for the
    // API's own checks, e.g. that this route's scope was granted.
    decode::<serde_json::Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}
