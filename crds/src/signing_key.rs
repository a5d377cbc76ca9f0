//! `SigningKey` (DESIGN.md §4): a rotated ring of JWT signing keys.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

pub use sigil_core::SigningAlgorithm;

use crate::validation::{DurationBounds, add_rule, duration_schema};

pub const DEFAULT_ROTATION_INTERVAL: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_PRE_PUBLISH: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_RETIRE_AFTER: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_RSA_BITS: u32 = 2048;

/// A JWT signing key ring. The operator keeps the private keys in the Secret
/// `<name>-keys` and rotates them; the issuer signs with the active key and
/// publishes every pending, active and retired public key in its JWKS.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sigil.dev",
    version = "v1alpha1",
    kind = "SigningKey",
    plural = "signingkeys",
    singular = "signingkey",
    namespaced,
    shortname = "sk",
    category = "sigil",
    status = "SigningKeyStatus",
    derive = "PartialEq",
    doc = "A rotated ring of JWT signing keys, published in the issuer's JWKS.",
    printcolumn(name = "Algorithm", type_ = "string", json_path = ".spec.algorithm"),
    printcolumn(name = "Active Kid", type_ = "string", json_path = ".status.activeKid"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = spec_rules)]
pub struct SigningKeySpec {
    /// JWS algorithm of the keys (RFC 7518 / RFC 8037); default ES256.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,

    /// RSA modulus size for RS*/PS* algorithms: 2048 (default), 3072 or 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = rsa_bits_schema)]
    pub rsa_bits: Option<u32>,

    /// How long a key signs before the next one takes over (default 720h,
    /// 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = rotation_interval_schema)]
    pub rotation_interval: Option<String>,

    /// How long a new key is published before it signs, so verifiers' JWKS
    /// caches learn it first (default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = pre_publish_schema)]
    pub pre_publish: Option<String>,

    /// How long a retired key stays published; cover the longest token TTL
    /// plus verifier cache time (default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = retire_after_schema)]
    pub retire_after: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyStatus {
    /// The kid that signs new tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_kid: Option<String>,
    /// Every key in the ring, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// Secret holding the private keys (`<name>-keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The `sigil.dev/rotate-requested-at` value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One key of the ring and its schedule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub kid: String,
    pub state: KeyState,
    pub created_at: Time,
    /// When it starts (or started) signing.
    pub activates_at: Time,
    /// When it stops signing; set once a successor is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum KeyState {
    Pending,
    Active,
    Retired,
}

impl SigningKeySpec {
    pub fn rotation_interval(&self) -> Duration {
        parse_or(&self.rotation_interval, DEFAULT_ROTATION_INTERVAL)
    }
    pub fn pre_publish(&self) -> Duration {
        parse_or(&self.pre_publish, DEFAULT_PRE_PUBLISH)
    }
    pub fn retire_after(&self) -> Duration {
        parse_or(&self.retire_after, DEFAULT_RETIRE_AFTER)
    }
    pub fn rsa_bits(&self) -> u32 {
        self.rsa_bits.unwrap_or(DEFAULT_RSA_BITS)
    }
}

impl SigningKey {
    /// The Secret holding this ring's private keys.
    pub fn secret_name(&self) -> String {
        format!("{}-keys", self.metadata.name.as_deref().unwrap_or_default())
    }
}

fn parse_or(value: &Option<String>, default: Duration) -> Duration {
    value
        .as_deref()
        .and_then(|s| crate::parse_duration(s).ok())
        .unwrap_or(default)
}

// The values and messages of the schema's rules, named once: the schema
// uses them, and so does `crate::validate`.

/// The RSA modulus sizes `rsaBits` may take, in schema order.
pub const RSA_BITS_VALUES: &[u32] = &[2048, 3072, 4096];
pub const RSA_BITS_ONLY_FOR_RSA_MESSAGE: &str =
    "rsaBits applies only to the RSA algorithms RS256, RS384, RS512 and PS256";
pub const PRE_PUBLISH_SHORTER_MESSAGE: &str =
    "prePublish must be shorter than rotationInterval (defaults: 24h and 720h)";
pub const ROTATION_INTERVAL_BOUNDS: DurationBounds = DurationBounds {
    field: "rotationInterval",
    min: Some("1s"),
    max: None,
};
pub const PRE_PUBLISH_BOUNDS: DurationBounds = DurationBounds::unbounded("prePublish");
pub const RETIRE_AFTER_BOUNDS: DurationBounds = DurationBounds::unbounded("retireAfter");

fn spec_rules(schema: &mut Schema) {
    add_rule(
        schema,
        "!has(self.rsaBits) || self.algorithm in ['RS256', 'RS384', 'RS512', 'PS256']",
        RSA_BITS_ONLY_FOR_RSA_MESSAGE,
        Some(".rsaBits"),
    );
    // The defaults in the rule are DEFAULT_PRE_PUBLISH and
    // DEFAULT_ROTATION_INTERVAL (a test in `crate::validate` holds them equal).
    add_rule(
        schema,
        "duration(has(self.prePublish) ? self.prePublish : '24h') < duration(has(self.rotationInterval) ? self.rotationInterval : '720h')",
        PRE_PUBLISH_SHORTER_MESSAGE,
        Some(".prePublish"),
    );
}

fn rsa_bits_schema(schema: &mut Schema) {
    schema.insert("enum".into(), serde_json::json!(RSA_BITS_VALUES));
}

fn rotation_interval_schema(schema: &mut Schema) {
    duration_schema(schema, &ROTATION_INTERVAL_BOUNDS);
}

fn pre_publish_schema(schema: &mut Schema) {
    duration_schema(schema, &PRE_PUBLISH_BOUNDS);
}

fn retire_after_schema(schema: &mut Schema) {
    duration_schema(schema, &RETIRE_AFTER_BOUNDS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let spec: SigningKeySpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(spec.algorithm, SigningAlgorithm::ES256);
        assert_eq!(spec.rotation_interval(), Duration::from_secs(30 * 86400));
        assert_eq!(spec.pre_publish(), Duration::from_secs(86400));
        assert_eq!(spec.retire_after(), Duration::from_secs(86400));
        assert_eq!(spec.rsa_bits(), 2048);
        let sk = SigningKey::new("default", spec);
        assert_eq!(sk.secret_name(), "default-keys");
    }

    #[test]
    fn algorithm_names_round_trip() {
        for alg in [
            SigningAlgorithm::ES256,
            SigningAlgorithm::ES384,
            SigningAlgorithm::RS256,
            SigningAlgorithm::RS384,
            SigningAlgorithm::RS512,
            SigningAlgorithm::PS256,
            SigningAlgorithm::EdDSA,
        ] {
            let json = serde_json::to_value(alg).unwrap();
            assert_eq!(json, serde_json::Value::String(alg.as_str().into()));
            assert_eq!(
                serde_json::from_value::<SigningAlgorithm>(json).unwrap(),
                alg
            );
        }
    }
}
