//! The table of manifests (`cases.yaml`) that holds `validate` and the CRD
//! schema to the same answers: the unit tests of `validate` and of the
//! standalone issuer run every case through Rust, and
//! `tests/tests/foundation.rs` sends every case to a real API server. Each
//! refused case names the field and a part of the message both must give.

use serde::Deserialize;
use serde_json::{Value, json};

/// The whole table.
#[derive(Debug, Deserialize)]
pub struct Table {
    /// Manifests both the API server and `validate` accept.
    pub accepted: Vec<Manifest>,
    /// Manifests both refuse.
    pub refused: Vec<RefusedCase>,
}

/// A Sigil resource, by kind, name and spec.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub kind: Kind,
    pub spec: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Kind {
    OAuthClient,
    SigningKey,
}

/// Which Rust step refuses a case the API server refuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RefusedBy {
    /// `validate_oauth_client` / `validate_signing_key`.
    #[default]
    Validation,
    /// Deserialising into the Rust type (enum values, required members,
    /// JSON types): the value cannot even be represented.
    Deserialization,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedCase {
    #[serde(flatten)]
    pub manifest: Manifest,
    /// The path the refusal names, e.g. `spec.additionalClaims`.
    pub field: String,
    /// A part of the message about that field, the same from the API
    /// server and from `validate`.
    pub message: String,
    #[serde(default)]
    pub refused_by: RefusedBy,
    /// For `refusedBy: deserialization`, a part of serde's error.
    #[serde(default)]
    pub deserialization_error: String,
    /// A known gap of the CRD schema: the API server accepts this manifest
    /// although Sigil must not use it, so only `validate` refuses it. The
    /// e2e test checks the API server still accepts it, so closing the gap
    /// in the schema shows up as a test to update.
    #[serde(default)]
    pub api_server_accepts: bool,
}

impl Manifest {
    /// The manifest as the API server receives it.
    pub fn to_json(&self) -> Value {
        json!({
            "apiVersion": format!("{}/v1alpha1", crate::GROUP),
            "kind": self.kind.as_str(),
            "metadata": { "name": self.name },
            "spec": self.spec,
        })
    }
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OAuthClient => "OAuthClient",
            Kind::SigningKey => "SigningKey",
        }
    }
}

/// The YAML text of the table.
pub const CASES_YAML: &str = include_str!("cases.yaml");

/// Parses the table, reading booleans as the standalone issuer does (YAML
/// 1.2: a JWK member `y` is a name, not `true`).
pub fn table() -> Result<Table, serde_saphyr::Error> {
    let options = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_str_with_options(CASES_YAML, options)
}
