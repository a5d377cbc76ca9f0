//! Client secrets (DESIGN.md §3, §7): how they are made and the verifier the
//! operator records in `status.secretVerifiers` and the issuer checks.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The system random number generator failed: no credential can be made.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// A fresh client secret: 256 bits from aws-lc-rs's system RNG, base64url
/// without padding (43 characters). The operator and standalone mode both
/// make secrets here.
pub fn generate_client_secret() -> Result<String, RandomError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| RandomError)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The verifier of a secret: lower-case hex SHA-256 of its bytes. A plain
/// hash is enough because every secret is 256 random bits (DESIGN.md §7).
pub fn secret_verifier(secret: &str) -> String {
    hex::encode(crate::digest::sha256(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_256_random_bits_base64url() {
        let a = generate_client_secret().expect("rng");
        let b = generate_client_secret().expect("rng");
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn verifier_is_hex_sha256() {
        assert_eq!(
            secret_verifier("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
