//! `kubectl sigil token`: a client-credentials request with the values of
//! the client's Secret. The client secret goes into the request's Basic
//! header and nowhere else: not into output, errors or `Debug`.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use sigil_crds::secret_keys;

pub struct Credentials {
    pub client_id: String,
    client_secret: String,
    pub token_url: String,
    /// The issuer's CA bundle (PEM), when the Secret carries one.
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("token_url", &self.token_url)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("Secret {secret} has no {key} key (is it the client's credentials Secret?)")]
    MissingKey { secret: String, key: &'static str },
    #[error("Secret {secret}: {key} is not UTF-8")]
    NotUtf8 { secret: String, key: &'static str },
    #[error("the CA bundle (ca.crt) cannot be used: {0}")]
    Ca(String),
    #[error("cannot reach the token endpoint {url}: {detail}")]
    Http { url: String, detail: String },
    #[error("the issuer refused the request (HTTP {status}): {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("the issuer's answer (HTTP {status}) is not a token response")]
    BadResponse { status: u16 },
}

impl Credentials {
    /// The values of a client credentials Secret (DESIGN.md §3).
    pub fn from_secret(secret: &Secret) -> Result<Credentials, TokenError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let data = secret.data.clone().unwrap_or_default();
        let text = |key: &'static str| -> Result<String, TokenError> {
            let value = data.get(key).ok_or_else(|| TokenError::MissingKey {
                secret: name.clone(),
                key,
            })?;
            String::from_utf8(value.0.clone()).map_err(|_| TokenError::NotUtf8 {
                secret: name.clone(),
                key,
            })
        };
        Ok(Credentials {
            client_id: text(secret_keys::CLIENT_ID)?,
            client_secret: text(secret_keys::CLIENT_SECRET)?,
            token_url: text(secret_keys::TOKEN_URL)?,
            ca_pem: data.get(secret_keys::CA_CRT).map(|v| v.0.clone()),
        })
    }
}

/// The form of the request: `audience` once per audience (the issuer takes
/// several), `scope` as given.
pub fn token_form(audiences: &[String], scope: Option<&str>) -> Vec<(&'static str, String)> {
    let mut form = vec![("grant_type", "client_credentials".to_owned())];
    form.extend(audiences.iter().map(|a| ("audience", a.clone())));
    if let Some(scope) = scope {
        form.push(("scope", scope.to_owned()));
    }
    form
}

/// RFC 6749 §2.3.1: Basic credentials are form-urlencoded first. Sigil's
/// generated ids and secrets need no encoding, but a chosen client id may.
fn form_urlencoded(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Asks the issuer for a token; the parsed token response on success.
pub async fn fetch_token(
    credentials: &Credentials,
    token_url: &str,
    form: &[(&'static str, String)],
) -> Result<serde_json::Value, TokenError> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(15));
    if let Some(ca) = &credentials.ca_pem {
        let certs =
            reqwest::Certificate::from_pem_bundle(ca).map_err(|e| TokenError::Ca(e.to_string()))?;
        // The issuer's CA and the platform's roots: the issuer URL may be
        // served by an ingress with a public certificate.
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    let http = builder.build().map_err(|e| TokenError::Http {
        url: token_url.to_owned(),
        detail: e.to_string(),
    })?;
    let response = http
        .post(token_url)
        .basic_auth(
            form_urlencoded(&credentials.client_id),
            Some(form_urlencoded(&credentials.client_secret)),
        )
        .form(form)
        .send()
        .await
        .map_err(|e| TokenError::Http {
            url: token_url.to_owned(),
            // Without the URL again, and reqwest never prints headers.
            detail: e.without_url().to_string(),
        })?;
    let status = response.status().as_u16();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|_| TokenError::BadResponse { status })?;
    token_result(status, body)
}

/// A 200 with an `access_token`, or the RFC 6749 §5.2 error it carries.
pub fn token_result(status: u16, body: serde_json::Value) -> Result<serde_json::Value, TokenError> {
    if status == 200 && body["access_token"].is_string() {
        return Ok(body);
    }
    match body["error"].as_str() {
        Some(error) => Err(TokenError::Refused {
            status,
            error: error.to_owned(),
            description: body["error_description"].as_str().map(str::to_owned),
        }),
        None => Err(TokenError::BadResponse { status }),
    }
}
