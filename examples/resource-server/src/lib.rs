//! A resource server's side of Sigil, as any service would write it with a
//! standard JWT library: fetch the issuer's JWKS, verify each bearer token's
//! signature, `iss`, `aud`, `exp` and `typ`, and require a scope per route.
//! 401 without a valid token, 403 with a valid token that lacks the scope.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

/// Command line shared by both example services.
#[derive(clap::Parser, Debug, Clone)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// Sigil's issuer URL (the `iss` claim); the JWKS is read from
    /// `<issuer>/.well-known/jwks.json`.
    #[arg(long, env = "ISSUER_URL")]
    pub issuer_url: String,
    /// The audience this service accepts.
    #[arg(long, env = "AUDIENCE")]
    pub audience: String,
    /// PEM bundle of the CAs trusted for fetching the JWKS, instead of the
    /// system roots: e.g. Sigil's `ca.crt` for an in-cluster issuer URL
    /// (the issuer's TLS Secret mounted, or distributed by trust-manager).
    #[arg(long, env = "CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Verifies Sigil access tokens against the issuer's JWKS.
pub struct Verifier {
    issuer: String,
    audience: String,
    jwks_url: String,
    http: reqwest::Client,
    jwks: RwLock<Option<(JwkSet, Instant)>>,
}

/// The claims a route needs.
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub client_id: String,
    #[serde(default)]
    pub scope: String,
}

/// How long a fetched JWKS is trusted before it is fetched again (jose's
/// default cache time). An unknown `kid` refetches sooner, at most every 10 s.
const JWKS_MAX_AGE: Duration = Duration::from_secs(600);
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);

/// An HTTPS client trusting only the CAs in `ca_file` when given (as the
/// token agent does with `ca.crt`), else the system roots. The file is read
/// once, here.
fn http_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the CA file {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("reading the CA file {}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("the CA file {} holds no PEM certificate", path.display());
        }
        builder = builder.tls_certs_only(certs);
    }
    builder.build().context("building the HTTPS client")
}

impl Verifier {
    /// A verifier for tokens of `issuer` for `audience`; the JWKS is fetched
    /// trusting only the CAs in `ca_file` when given, else the system roots.
    pub fn new(
        issuer: &str,
        audience: &str,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Arc<Verifier>> {
        let issuer = issuer.trim_end_matches('/').to_owned();
        Ok(Arc::new(Verifier {
            jwks_url: format!("{issuer}/.well-known/jwks.json"),
            issuer,
            audience: audience.to_owned(),
            http: http_client(ca_file)?,
            jwks: RwLock::new(None),
        }))
    }

    async fn fetch_jwks(&self) -> anyhow::Result<JwkSet> {
        let set = self
            .http
            .get(&self.jwks_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("fetching {}", self.jwks_url))?
            .json::<JwkSet>()
            .await
            .context("parsing the JWKS")?;
        *self.jwks.write().await = Some((set.clone(), Instant::now()));
        Ok(set)
    }

    async fn key_for(&self, kid: &str) -> anyhow::Result<DecodingKey> {
        let cached = self.jwks.read().await.clone();
        let (set, fetched_at) = match cached {
            Some((set, at)) if at.elapsed() < JWKS_MAX_AGE => (set, at),
            _ => (self.fetch_jwks().await?, Instant::now()),
        };
        let set = match set.find(kid) {
            Some(_) => set,
            // A key we have not seen: maybe a rotation we have not learnt yet.
            None if fetched_at.elapsed() >= JWKS_MIN_REFETCH => self.fetch_jwks().await?,
            None => set,
        };
        let jwk = set.find(kid).context("unknown kid")?;
        DecodingKey::from_jwk(jwk).context("unusable JWK")
    }

    /// Verifies a bearer token; the error says why, for the 401 body (never
    /// the token itself).
    pub async fn verify(&self, token: &str) -> anyhow::Result<Claims> {
        let header = jsonwebtoken::decode_header(token).context("malformed token")?;
        match header.typ.as_deref() {
            Some("at+jwt") | Some("JWT") => {}
            _ => anyhow::bail!("not an access token (typ)"),
        }
        let kid = header.kid.context("token without kid")?;
        let key = self.key_for(&kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| anyhow::anyhow!("invalid token: {e}"))?;
        Ok(data.claims)
    }
}

/// Why a request was refused.
#[derive(Debug)]
pub enum Denied {
    /// No valid token: 401.
    Unauthorized(String),
    /// A valid token without the scope the route needs: 403.
    MissingScope(String),
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let (status, challenge, body) = match self {
            Denied::Unauthorized(why) => {
                tracing::info!(reason = %why, "rejected a request");
                (
                    StatusCode::UNAUTHORIZED,
                    "Bearer error=\"invalid_token\"".to_owned(),
                    serde_json::json!({ "error": "invalid_token", "error_description": why }),
                )
            }
            // RFC 6750 §3.1.
            Denied::MissingScope(scope) => (
                StatusCode::FORBIDDEN,
                format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""),
                serde_json::json!({ "error": "insufficient_scope", "required_scope": scope }),
            ),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// An authenticated caller; extracting it answers 401 for a missing or
/// invalid token.
pub struct Caller(pub Claims);

impl FromRequestParts<Arc<Verifier>> for Caller {
    type Rejection = Denied;

    async fn from_request_parts(
        parts: &mut Parts,
        verifier: &Arc<Verifier>,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Denied::Unauthorized("missing bearer token".into()))?;
        let claims = verifier
            .verify(token)
            .await
            .map_err(|e| Denied::Unauthorized(format!("{e:#}")))?;
        Ok(Caller(claims))
    }
}

impl Caller {
    /// Refuses (403) unless the token carries `scope`.
    pub fn require(&self, scope: &str) -> Result<(), Denied> {
        if self.0.scope.split(' ').any(|s| s == scope) {
            Ok(())
        } else {
            Err(Denied::MissingScope(scope.to_owned()))
        }
    }
}

/// Serves `router` (whose state is the verifier) until Ctrl-C.
pub async fn serve(
    args: Args,
    name: &str,
    router: axum::Router<Arc<Verifier>>,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let verifier = Verifier::new(&args.issuer_url, &args.audience, args.ca_file.as_deref())?;
    let app = router.with_state(verifier);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, audience = %args.audience, "{name} listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "sigil-resource-server-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("writing a temp file");
        path
    }

    fn error_of(ca_file: &Path) -> String {
        match Verifier::new("https://sigil.example", "event", Some(ca_file)) {
            Ok(_) => panic!("{} accepted", ca_file.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_ca_file_is_read_when_the_verifier_is_built() {
        let missing = std::env::temp_dir().join("sigil-resource-server-no-such-ca.crt");
        let error = error_of(&missing);
        assert!(
            error.contains("reading the CA file") && error.contains("no-such-ca.crt"),
            "{error}"
        );

        let empty = temp_file("empty.crt", b"not a certificate\n");
        let error = error_of(&empty);
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let _ = std::fs::remove_file(empty);

        let bundle = temp_file("bundle.crt", CA_PEM.as_bytes());
        let verifier = Verifier::new("https://sigil.example/", "event", Some(&bundle));
        let _ = std::fs::remove_file(bundle);
        assert_eq!(
            verifier.expect("a good bundle").issuer,
            "https://sigil.example"
        );
        assert!(Verifier::new("https://sigil.example", "event", None).is_ok());
    }

    /// A self-signed CA certificate (openssl, ECDSA P-256, valid until
    /// 2126), for reading only.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBlzCCAT2gAwIBAgIUdOQ7By0aFd7ikTNc5cmgPj9Q5qMwCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVc2lnaWwtZXhhbXBsZS10ZXN0LWNhMCAXDTI2MTIwNzA2MDI0
NloYDzIxMjYxMTEzMDYwMjQ2WjAgMR4wHAYDVQQDDBVzaWdpbC1leGFtcGxlLXRl
c3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAR/7GutCc9AqwZV82lubzK4
RyAFFGm+sYZmLJCqpRMaLaYtQIUTkH/YMJOIGlULxjasXcf8dK8afhEI0etHVIQB
o1MwUTAdBgNVHQ4EFgQUWrfccyz60/l35WE4tCMH28L+QxswHwYDVR0jBBgwFoAU
Wrfccyz60/l35WE4tCMH28L+QxswDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNIADBFAiAqK1Saw9gtTl/rtRvqdERQ+zhgIF5i4r2oGQzwCuEdnQIhANcs7Vs8
4R8kzlzDA9bPs23A+Vjh45o3VZIJTtK8lAcr
-----END CERTIFICATE-----
";
}
