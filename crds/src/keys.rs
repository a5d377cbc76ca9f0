//! Signing-key material for a `SigningKey` ring (DESIGN.md §4): generation
//! of PKCS#8 PEM private keys, their public JWK, and the RFC 7638 `kid`.
//!
//! Shared by the operator (which stores keys in the `<name>-keys` Secret)
//! and the issuer (which signs with them and publishes the JWKS, and in
//! standalone mode generates keys itself). No I/O here.
//!
//! Nothing in this module puts key material in an error or a `Debug`
//! string: errors name the algorithm and the step that failed, and
//! [`GeneratedKey`]'s `Debug` leaves the PEM out.

use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::SigningAlgorithm;

/// RSA modulus sizes the contract allows.
pub const RSA_BITS_ALLOWED: [u32; 3] = [2048, 3072, 4096];

/// A freshly generated private key of a ring.
#[derive(Clone)]
pub struct GeneratedKey {
    /// RFC 7638 SHA-256 thumbprint of the public key, base64url.
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    /// PKCS#8 private key, PEM (`-----BEGIN PRIVATE KEY-----`).
    pub pkcs8_pem: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("pkcs8_pem", &"<redacted>")
            .finish()
    }
}

/// Why a key could not be generated or read. Messages never contain key
/// material, only the algorithm and the step.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported RSA key size {0} bits (allowed: 2048, 3072, 4096)")]
    UnsupportedRsaBits(u32),
    #[error("generating a {algorithm} key failed: {reason}")]
    Generate {
        algorithm: &'static str,
        reason: String,
    },
    #[error("the private key is not a valid PKCS#8 PEM {algorithm} key: {reason}")]
    InvalidPrivateKey {
        algorithm: &'static str,
        reason: String,
    },
    #[error("building the public JWK of a {algorithm} key failed: {reason}")]
    Jwk {
        algorithm: &'static str,
        reason: String,
    },
}

/// The jsonwebtoken algorithm for a contract algorithm.
pub fn jwt_algorithm(algorithm: SigningAlgorithm) -> Algorithm {
    match algorithm {
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::ES384 => Algorithm::ES384,
        SigningAlgorithm::RS256 => Algorithm::RS256,
        SigningAlgorithm::RS384 => Algorithm::RS384,
        SigningAlgorithm::RS512 => Algorithm::RS512,
        SigningAlgorithm::PS256 => Algorithm::PS256,
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// The rcgen algorithm whose key type matches. RSA keys are the same for
/// every RSA JWS algorithm (the padding and hash are chosen at sign time),
/// so all of them are generated and parsed as PKCS#1 v1.5 SHA-256 keys.
fn rcgen_algorithm(algorithm: SigningAlgorithm) -> &'static rcgen::SignatureAlgorithm {
    match algorithm {
        SigningAlgorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        SigningAlgorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        SigningAlgorithm::EdDSA => &rcgen::PKCS_ED25519,
        SigningAlgorithm::RS256
        | SigningAlgorithm::RS384
        | SigningAlgorithm::RS512
        | SigningAlgorithm::PS256 => &rcgen::PKCS_RSA_SHA256,
    }
}

/// Generates a new private key. Blocking: RSA takes 50–170 ms for 2048
/// bits (much more for 4096), so async callers use `spawn_blocking`.
/// `rsa_bits` is ignored for non-RSA algorithms.
pub fn generate(algorithm: SigningAlgorithm, rsa_bits: u32) -> Result<GeneratedKey, KeyError> {
    let generate_error = |e: rcgen::Error| KeyError::Generate {
        algorithm: algorithm.as_str(),
        reason: e.to_string(),
    };
    let key_pair = if algorithm.is_rsa() {
        let size = match rsa_bits {
            2048 => rcgen::RsaKeySize::_2048,
            3072 => rcgen::RsaKeySize::_3072,
            4096 => rcgen::RsaKeySize::_4096,
            other => return Err(KeyError::UnsupportedRsaBits(other)),
        };
        rcgen::KeyPair::generate_rsa_for(rcgen_algorithm(algorithm), size)
            .map_err(generate_error)?
    } else {
        rcgen::KeyPair::generate_for(rcgen_algorithm(algorithm)).map_err(generate_error)?
    };
    let pkcs8_pem = key_pair.serialize_pem();
    let kid = kid(algorithm, &pkcs8_pem)?;
    Ok(GeneratedKey {
        kid,
        algorithm,
        pkcs8_pem,
    })
}

/// The public JWK of a private key, with `kid` (RFC 7638 SHA-256
/// thumbprint, base64url), `alg` and `use: sig` set. Fails if the key is
/// not a PKCS#8 PEM key of the algorithm's type (e.g. a P-384 key for
/// ES256).
pub fn public_jwk(algorithm: SigningAlgorithm, pkcs8_pem: &str) -> Result<Jwk, KeyError> {
    let key_pair =
        rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(pkcs8_pem, rcgen_algorithm(algorithm))
            .map_err(|e| KeyError::InvalidPrivateKey {
                algorithm: algorithm.as_str(),
                reason: e.to_string(),
            })?;
    // Built from the public key: jsonwebtoken refuses the PKCS#8 v2 Ed25519
    // keys rcgen writes when asked for a JWK from the private key.
    let public_pem = key_pair.public_key_pem();
    let jwk_error = |e: jsonwebtoken::errors::Error| KeyError::Jwk {
        algorithm: algorithm.as_str(),
        reason: e.to_string(),
    };
    let decoding_key = match algorithm {
        SigningAlgorithm::ES256 | SigningAlgorithm::ES384 => {
            DecodingKey::from_ec_pem(public_pem.as_bytes())
        }
        SigningAlgorithm::EdDSA => DecodingKey::from_ed_pem(public_pem.as_bytes()),
        SigningAlgorithm::RS256
        | SigningAlgorithm::RS384
        | SigningAlgorithm::RS512
        | SigningAlgorithm::PS256 => DecodingKey::from_rsa_pem(public_pem.as_bytes()),
    }
    .map_err(jwk_error)?;
    let mut jwk =
        Jwk::from_decoding_key(&decoding_key, Some(jwt_algorithm(algorithm))).map_err(jwk_error)?;
    let thumbprint = jwk.thumbprint(ThumbprintHash::SHA256).map_err(jwk_error)?;
    jwk.common.key_id = Some(thumbprint);
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(jwk)
}

/// The `kid` of a private key: the RFC 7638 SHA-256 thumbprint of its
/// public JWK, base64url without padding.
pub fn kid(algorithm: SigningAlgorithm, pkcs8_pem: &str) -> Result<String, KeyError> {
    let jwk = public_jwk(algorithm, pkcs8_pem)?;
    jwk.common.key_id.ok_or(KeyError::Jwk {
        algorithm: algorithm.as_str(),
        reason: "no thumbprint was computed".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, Validation};
    use serde::{Deserialize, Serialize};

    const ALL: [SigningAlgorithm; 7] = [
        SigningAlgorithm::ES256,
        SigningAlgorithm::ES384,
        SigningAlgorithm::RS256,
        SigningAlgorithm::RS384,
        SigningAlgorithm::RS512,
        SigningAlgorithm::PS256,
        SigningAlgorithm::EdDSA,
    ];

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    fn encoding_key(algorithm: SigningAlgorithm, pem: &str) -> EncodingKey {
        let bytes = pem.as_bytes();
        match algorithm {
            SigningAlgorithm::ES256 | SigningAlgorithm::ES384 => EncodingKey::from_ec_pem(bytes),
            SigningAlgorithm::EdDSA => EncodingKey::from_ed_pem(bytes),
            _ => EncodingKey::from_rsa_pem(bytes),
        }
        .expect("the generated PEM loads as an encoding key")
    }

    #[test]
    fn every_algorithm_signs_and_verifies_through_its_jwk() {
        for algorithm in ALL {
            let key = generate(algorithm, 2048).expect("generate");
            assert!(key.pkcs8_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            assert_eq!(key.algorithm, algorithm);

            let jwk = public_jwk(algorithm, &key.pkcs8_pem).expect("public jwk");
            assert_eq!(jwk.common.key_id.as_deref(), Some(key.kid.as_str()));
            assert_eq!(jwk.common.public_key_use, Some(PublicKeyUse::Signature));
            let json = serde_json::to_value(&jwk).expect("jwk serializes");
            assert_eq!(json["alg"], algorithm.as_str(), "{json}");
            assert_eq!(json["use"], "sig");
            assert!(json.get("d").is_none(), "a public JWK has no private part");

            let alg = jwt_algorithm(algorithm);
            let mut header = Header::new(alg);
            header.kid = Some(key.kid.clone());
            let claims = Claims {
                sub: "task-service.tasks".into(),
                exp: 4_102_444_800,
            };
            let token =
                jsonwebtoken::encode(&header, &claims, &encoding_key(algorithm, &key.pkcs8_pem))
                    .unwrap_or_else(|e| panic!("{algorithm:?} signs: {e}"));
            let decoding = DecodingKey::from_jwk(&jwk).expect("decoding key from jwk");
            let mut validation = Validation::new(alg);
            validation.validate_aud = false;
            let data = jsonwebtoken::decode::<Claims>(&token, &decoding, &validation)
                .unwrap_or_else(|e| panic!("{algorithm:?} verifies: {e}"));
            assert_eq!(data.claims, claims);
            assert_eq!(data.header.kid.as_deref(), Some(key.kid.as_str()));
        }
    }

    #[test]
    fn kid_is_the_stable_rfc7638_thumbprint() {
        for algorithm in [SigningAlgorithm::ES256, SigningAlgorithm::EdDSA] {
            let key = generate(algorithm, 2048).expect("generate");
            let again = kid(algorithm, &key.pkcs8_pem).expect("kid");
            assert_eq!(again, key.kid);
            // 32 bytes of SHA-256, base64url without padding.
            assert_eq!(key.kid.len(), 43);
            assert!(
                key.kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
            let jwk = public_jwk(algorithm, &key.pkcs8_pem).expect("jwk");
            assert_eq!(jwk.thumbprint(ThumbprintHash::SHA256).expect("tp"), key.kid);
            let other = generate(algorithm, 2048).expect("generate");
            assert_ne!(other.kid, key.kid);
        }
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // The RSA key of RFC 7638 §3.1 and its published thumbprint.
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .expect("RFC 7638 JWK parses");
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256).expect("thumbprint"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn a_key_of_the_wrong_type_is_refused() {
        let ec = generate(SigningAlgorithm::ES256, 2048).expect("generate");
        let err =
            public_jwk(SigningAlgorithm::ES384, &ec.pkcs8_pem).expect_err("P-256 is not ES384");
        assert!(matches!(err, KeyError::InvalidPrivateKey { .. }));
        assert!(public_jwk(SigningAlgorithm::EdDSA, &ec.pkcs8_pem).is_err());
        assert!(public_jwk(SigningAlgorithm::RS256, &ec.pkcs8_pem).is_err());
        assert!(public_jwk(SigningAlgorithm::ES256, "not a pem").is_err());
    }

    #[test]
    fn rsa_sizes() {
        assert!(matches!(
            generate(SigningAlgorithm::RS256, 1024),
            Err(KeyError::UnsupportedRsaBits(1024))
        ));
        let key = generate(SigningAlgorithm::PS256, 3072).expect("3072-bit key");
        let jwk =
            serde_json::to_value(public_jwk(SigningAlgorithm::PS256, &key.pkcs8_pem).expect("jwk"))
                .expect("json");
        let n = jwk["n"].as_str().expect("n");
        // 3072 bits = 384 bytes = 512 base64url characters.
        assert_eq!(n.len(), 512);
        // rsa_bits is ignored for other algorithms.
        assert!(generate(SigningAlgorithm::ES256, 0).is_ok());
    }

    #[test]
    fn debug_and_errors_never_show_key_material() {
        let key = generate(SigningAlgorithm::ES256, 2048).expect("generate");
        let debug = format!("{key:?}");
        assert!(!debug.contains("PRIVATE KEY"));
        assert!(debug.contains(&key.kid));
        // A PEM of the wrong type: the error must not echo any of it.
        let body: String = key.pkcs8_pem.lines().nth(1).expect("pem body").to_owned();
        let err = public_jwk(SigningAlgorithm::EdDSA, &key.pkcs8_pem).expect_err("wrong type");
        let message = format!("{err} {err:?}");
        assert!(!message.contains(&body[..20]), "{message}");
    }
}
