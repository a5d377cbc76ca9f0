//! The JWS algorithms a `SigningKey` may use (DESIGN.md §4).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum SigningAlgorithm {
    #[default]
    ES256,
    ES384,
    RS256,
    RS384,
    RS512,
    PS256,
    EdDSA,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::ES256 => "ES256",
            SigningAlgorithm::ES384 => "ES384",
            SigningAlgorithm::RS256 => "RS256",
            SigningAlgorithm::RS384 => "RS384",
            SigningAlgorithm::RS512 => "RS512",
            SigningAlgorithm::PS256 => "PS256",
            SigningAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            SigningAlgorithm::RS256
                | SigningAlgorithm::RS384
                | SigningAlgorithm::RS512
                | SigningAlgorithm::PS256
        )
    }
}
