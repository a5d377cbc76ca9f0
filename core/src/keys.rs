//! Signing-key material of a `SigningKey` ring (DESIGN.md §4), in one
//! aws-lc-rs implementation shared by the operator (which generates keys and
//! stores them in the `<name>-keys` Secret), the issuer (which signs with
//! them and publishes the JWKS) and standalone mode (which does both).
//!
//! Keys are parsed once into aws-lc-rs key pairs, so the token hot path
//! signs without re-parsing (what `jsonwebtoken::encode` does on every call).
//! The public side of each key: its JWK, RFC 7638 thumbprint (Sigil's `kid`)
//! and a verifier used by introspection.
//!
//! Nothing here puts key material in an error or a `Debug` string: errors
//! name the algorithm and the step that failed.

use crate::SigningAlgorithm;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// RSA modulus sizes the contract allows.
pub const RSA_BITS_ALLOWED: [u32; 3] = [2048, 3072, 4096];

/// Why a key could not be generated, read or used. Messages never contain
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported RSA key size {0} bits (allowed: 2048, 3072, 4096)")]
    UnsupportedRsaBits(u32),
    #[error("the private key is not PEM: {0}")]
    Pem(&'static str),
    #[error("the private key is not a valid PKCS#8 {algorithm} key: {reason}")]
    Rejected {
        algorithm: &'static str,
        reason: String,
    },
    #[error("generating a {0} key failed")]
    Generate(&'static str),
    #[error("signing with a {0} key failed")]
    Sign(&'static str),
}

enum Pair {
    Ecdsa(signature::EcdsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
    Rsa(signature::RsaKeyPair, &'static dyn signature::RsaEncoding),
}

/// A private key ready to sign, and what is needed to publish it.
pub struct ParsedKey {
    algorithm: SigningAlgorithm,
    pair: Pair,
    rng: SystemRandom,
}

impl std::fmt::Debug for ParsedKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParsedKey({})", self.algorithm.as_str())
    }
}

impl ParsedKey {
    pub fn from_pkcs8_pem(algorithm: SigningAlgorithm, pem: &str) -> Result<Self, KeyError> {
        Self::from_pkcs8_der(algorithm, &pem_to_der(pem)?)
    }

    pub fn from_pkcs8_der(algorithm: SigningAlgorithm, der: &[u8]) -> Result<Self, KeyError> {
        let rejected = |e: aws_lc_rs::error::KeyRejected| KeyError::Rejected {
            algorithm: algorithm.as_str(),
            reason: e.to_string(),
        };
        let pair = match algorithm {
            SigningAlgorithm::ES256 => Pair::Ecdsa(
                signature::EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                )
                .map_err(rejected)?,
            ),
            SigningAlgorithm::ES384 => Pair::Ecdsa(
                signature::EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    der,
                )
                .map_err(rejected)?,
            ),
            // Accepts PKCS#8 v1 and v2 (rcgen and aws-lc produce either).
            SigningAlgorithm::EdDSA => Pair::Ed25519(
                signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?,
            ),
            SigningAlgorithm::RS256
            | SigningAlgorithm::RS384
            | SigningAlgorithm::RS512
            | SigningAlgorithm::PS256 => {
                let encoding: &'static dyn signature::RsaEncoding = match algorithm {
                    SigningAlgorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    SigningAlgorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    SigningAlgorithm::PS256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                Pair::Rsa(
                    signature::RsaKeyPair::from_pkcs8(der).map_err(rejected)?,
                    encoding,
                )
            }
        };
        Ok(ParsedKey {
            algorithm,
            pair,
            rng: SystemRandom::new(),
        })
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// The JWS signature over `message` (fixed-size r||s for ECDSA).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let failed = |_| KeyError::Sign(self.algorithm.as_str());
        match &self.pair {
            Pair::Ecdsa(pair) => Ok(pair
                .sign(&self.rng, message)
                .map_err(failed)?
                .as_ref()
                .to_vec()),
            Pair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::Rsa(pair, encoding) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(*encoding, &self.rng, message, &mut signature)
                    .map_err(failed)?;
                Ok(signature)
            }
        }
    }

    /// The public key's JWK members that RFC 7638 hashes, in lexicographic
    /// order: exactly the thumbprint input.
    fn required_members(&self) -> Vec<(&'static str, String)> {
        match &self.pair {
            Pair::Ecdsa(pair) => {
                // Uncompressed point: 0x04 || X || Y.
                let point = pair.public_key().as_ref();
                let coordinate_len = (point.len() - 1) / 2;
                let crv = if self.algorithm == SigningAlgorithm::ES384 {
                    "P-384"
                } else {
                    "P-256"
                };
                vec![
                    ("crv", crv.to_owned()),
                    ("kty", "EC".to_owned()),
                    ("x", URL_SAFE_NO_PAD.encode(&point[1..1 + coordinate_len])),
                    ("y", URL_SAFE_NO_PAD.encode(&point[1 + coordinate_len..])),
                ]
            }
            Pair::Ed25519(pair) => vec![
                ("crv", "Ed25519".to_owned()),
                ("kty", "OKP".to_owned()),
                ("x", URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())),
            ],
            Pair::Rsa(pair, _) => {
                let public = pair.public_key();
                vec![
                    (
                        "e",
                        URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                    ),
                    ("kty", "RSA".to_owned()),
                    (
                        "n",
                        URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                    ),
                ]
            }
        }
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url): Sigil's `kid`.
    pub fn thumbprint(&self) -> String {
        let mut members = serde_json::Map::new();
        for (name, value) in self.required_members() {
            members.insert(name.to_owned(), serde_json::Value::String(value));
        }
        // serde_json's Map is sorted (no preserve_order), and the values are
        // base64url / ASCII, so this is the canonical RFC 7638 form.
        let canonical = serde_json::Value::Object(members).to_string();
        URL_SAFE_NO_PAD.encode(crate::digest::sha256(canonical.as_bytes()))
    }

    /// The public JWK published in the JWKS (RFC 7517 with `kid`, `alg`,
    /// `use`).
    pub fn public_jwk(&self, kid: &str) -> serde_json::Value {
        let mut jwk = serde_json::Map::new();
        for (name, value) in self.required_members() {
            jwk.insert(name.to_owned(), serde_json::Value::String(value));
        }
        jwk.insert("kid".into(), kid.into());
        jwk.insert("alg".into(), self.algorithm.as_str().into());
        jwk.insert("use".into(), "sig".into());
        serde_json::Value::Object(jwk)
    }

    /// A verifier for signatures made by this key.
    pub fn verifier(&self) -> PublicVerifier {
        let public_key = match &self.pair {
            Pair::Ecdsa(pair) => pair.public_key().as_ref().to_vec(),
            Pair::Ed25519(pair) => pair.public_key().as_ref().to_vec(),
            // DER RSAPublicKey, what the RSA verification algorithms take.
            Pair::Rsa(pair, _) => pair.public_key().as_ref().to_vec(),
        };
        let algorithm: &'static dyn signature::VerificationAlgorithm = match self.algorithm {
            SigningAlgorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            SigningAlgorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
            SigningAlgorithm::EdDSA => &signature::ED25519,
            SigningAlgorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            SigningAlgorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            SigningAlgorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            SigningAlgorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        };
        PublicVerifier {
            algorithm,
            jws_alg: self.algorithm.as_str(),
            public_key,
        }
    }
}

/// Checks JWS signatures of one public key.
pub struct PublicVerifier {
    algorithm: &'static dyn signature::VerificationAlgorithm,
    jws_alg: &'static str,
    public_key: Vec<u8>,
}

impl std::fmt::Debug for PublicVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicVerifier({})", self.jws_alg)
    }
}

impl PublicVerifier {
    pub fn jws_alg(&self) -> &'static str {
        self.jws_alg
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(self.algorithm, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }
}

/// A new private key, PKCS#8 DER. Blocking (RSA generation takes up to
/// ~200 ms): call it off the async runtime.
pub fn generate_pkcs8_der(algorithm: SigningAlgorithm, rsa_bits: u32) -> Result<Vec<u8>, KeyError> {
    let failed = |_| KeyError::Generate(algorithm.as_str());
    let rng = SystemRandom::new();
    match algorithm {
        SigningAlgorithm::ES256 => Ok(signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .map_err(failed)?
        .as_ref()
        .to_vec()),
        SigningAlgorithm::ES384 => Ok(signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &rng,
        )
        .map_err(failed)?
        .as_ref()
        .to_vec()),
        SigningAlgorithm::EdDSA => Ok(signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(failed)?
            .as_ref()
            .to_vec()),
        SigningAlgorithm::RS256
        | SigningAlgorithm::RS384
        | SigningAlgorithm::RS512
        | SigningAlgorithm::PS256 => {
            let size = match rsa_bits {
                2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                other => return Err(KeyError::UnsupportedRsaBits(other)),
            };
            let pair = signature::RsaKeyPair::generate(size).map_err(failed)?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = pair.as_der().map_err(failed)?;
            Ok(der.as_ref().to_vec())
        }
    }
}

/// A freshly generated private key of a ring.
#[derive(Clone)]
pub struct GeneratedKey {
    /// RFC 7638 SHA-256 thumbprint of the public key, base64url.
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    /// PKCS#8 private key, PEM (`-----BEGIN PRIVATE KEY-----`), the format
    /// of the `<name>-keys` Secret and of standalone's state files.
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

/// Generates a new private key with its `kid`. Blocking: RSA takes 50–200
/// ms for 2048 bits (much more for 4096), so async callers use
/// `spawn_blocking`. `rsa_bits` is ignored for non-RSA algorithms.
pub fn generate(algorithm: SigningAlgorithm, rsa_bits: u32) -> Result<GeneratedKey, KeyError> {
    let der = generate_pkcs8_der(algorithm, rsa_bits)?;
    let kid = ParsedKey::from_pkcs8_der(algorithm, &der)?.thumbprint();
    Ok(GeneratedKey {
        kid,
        algorithm,
        pkcs8_pem: pkcs8_der_to_pem(&der),
    })
}

/// The `kid` of a PKCS#8 PEM private key: the RFC 7638 SHA-256 thumbprint of
/// its public JWK. Fails if the key is not of the algorithm's type.
pub fn kid(algorithm: SigningAlgorithm, pkcs8_pem: &str) -> Result<String, KeyError> {
    Ok(ParsedKey::from_pkcs8_pem(algorithm, pkcs8_pem)?.thumbprint())
}

/// PKCS#8 DER → PEM (`PRIVATE KEY`), the format of the `<name>-keys` Secret.
pub fn pkcs8_der_to_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// The DER inside the first PEM block.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, KeyError> {
    let mut lines = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN "));
    if lines.next().is_none() {
        return Err(KeyError::Pem("no BEGIN line"));
    }
    let mut body = String::new();
    let mut ended = false;
    for line in lines {
        if line.starts_with("-----END ") {
            ended = true;
            break;
        }
        body.push_str(line);
    }
    if !ended {
        return Err(KeyError::Pem("no END line"));
    }
    STANDARD
        .decode(body.as_bytes())
        .map_err(|_| KeyError::Pem("the body is not base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [SigningAlgorithm; 7] = [
        SigningAlgorithm::ES256,
        SigningAlgorithm::ES384,
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::RS256,
        SigningAlgorithm::RS384,
        SigningAlgorithm::RS512,
        SigningAlgorithm::PS256,
    ];

    #[test]
    fn every_algorithm_signs_and_verifies_through_pem() {
        for algorithm in ALL {
            let pem = pkcs8_der_to_pem(&generate_pkcs8_der(algorithm, 2048).unwrap());
            let key = ParsedKey::from_pkcs8_pem(algorithm, &pem).unwrap();
            let signature = key.sign(b"message").unwrap();
            let verifier = key.verifier();
            assert!(verifier.verify(b"message", &signature), "{algorithm:?}");
            assert!(!verifier.verify(b"other", &signature), "{algorithm:?}");
            let jwk = key.public_jwk("k1");
            assert_eq!(jwk["alg"], algorithm.as_str());
            assert_eq!(jwk["use"], "sig");
        }
    }

    #[test]
    fn jwk_is_accepted_by_jsonwebtoken_and_verifies_our_signature() {
        for algorithm in [
            SigningAlgorithm::ES256,
            SigningAlgorithm::EdDSA,
            SigningAlgorithm::RS256,
            SigningAlgorithm::PS256,
        ] {
            let key =
                ParsedKey::from_pkcs8_der(algorithm, &generate_pkcs8_der(algorithm, 2048).unwrap())
                    .unwrap();
            let kid = key.thumbprint();
            let header = URL_SAFE_NO_PAD.encode(
                serde_json::json!({"alg": algorithm.as_str(), "kid": kid, "typ": "JWT"})
                    .to_string(),
            );
            let claims = URL_SAFE_NO_PAD.encode(r#"{"sub":"x","exp":4102444800}"#);
            let input = format!("{header}.{claims}");
            let token = format!(
                "{input}.{}",
                URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).unwrap())
            );
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk(&kid)).unwrap();
            let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
            let alg: jsonwebtoken::Algorithm = algorithm.as_str().parse().unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg);
            validation.required_spec_claims.clear();
            validation.validate_aud = false;
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
                .unwrap_or_else(|e| panic!("{algorithm:?}: {e}"));
        }
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 §3.1 example key (RSA) — recompute from its members.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let canonical = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        assert_eq!(
            URL_SAFE_NO_PAD.encode(crate::digest::sha256(canonical.as_bytes())),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // And ours produces the same canonical layout (sorted, no spaces).
        let key = ParsedKey::from_pkcs8_der(
            SigningAlgorithm::ES256,
            &generate_pkcs8_der(SigningAlgorithm::ES256, 2048).unwrap(),
        )
        .unwrap();
        let jwk = key.public_jwk("ignored");
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        assert_eq!(
            key.thumbprint(),
            URL_SAFE_NO_PAD.encode(crate::digest::sha256(canonical.as_bytes()))
        );
    }

    #[test]
    fn kid_is_the_stable_thumbprint_and_matches_jsonwebtoken() {
        for algorithm in ALL {
            let key = generate(algorithm, 2048).expect("generate");
            assert!(key.pkcs8_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            assert_eq!(kid(algorithm, &key.pkcs8_pem).expect("kid"), key.kid);
            // 32 bytes of SHA-256, base64url without padding.
            assert_eq!(key.kid.len(), 43);
            let parsed = ParsedKey::from_pkcs8_pem(algorithm, &key.pkcs8_pem).expect("parse");
            let jwk: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(parsed.public_jwk(&key.kid)).expect("jwk");
            assert_eq!(
                jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
                    .expect("thumbprint"),
                key.kid,
                "{algorithm:?}"
            );
            assert_ne!(generate(algorithm, 2048).expect("generate").kid, key.kid);
        }
    }

    #[test]
    fn a_key_of_the_wrong_type_is_refused() {
        let ec = generate(SigningAlgorithm::ES256, 2048).expect("generate");
        assert!(matches!(
            kid(SigningAlgorithm::ES384, &ec.pkcs8_pem),
            Err(KeyError::Rejected { .. })
        ));
        assert!(kid(SigningAlgorithm::EdDSA, &ec.pkcs8_pem).is_err());
        assert!(kid(SigningAlgorithm::RS256, &ec.pkcs8_pem).is_err());
        assert!(kid(SigningAlgorithm::ES256, "not a pem").is_err());
    }

    #[test]
    fn rsa_sizes() {
        assert!(matches!(
            generate(SigningAlgorithm::RS256, 1024),
            Err(KeyError::UnsupportedRsaBits(1024))
        ));
        let key = generate(SigningAlgorithm::PS256, 3072).expect("3072-bit key");
        let parsed = ParsedKey::from_pkcs8_pem(SigningAlgorithm::PS256, &key.pkcs8_pem).unwrap();
        // 3072 bits = 384 bytes = 512 base64url characters.
        assert_eq!(parsed.public_jwk("k")["n"].as_str().expect("n").len(), 512);
        // rsa_bits is ignored for other algorithms.
        assert!(generate(SigningAlgorithm::ES256, 0).is_ok());
    }

    #[test]
    fn debug_and_errors_never_show_key_material() {
        let key = generate(SigningAlgorithm::ES256, 2048).expect("generate");
        let debug = format!("{key:?}");
        assert!(!debug.contains("PRIVATE KEY"));
        assert!(debug.contains(&key.kid));
        let parsed = ParsedKey::from_pkcs8_pem(SigningAlgorithm::ES256, &key.pkcs8_pem).unwrap();
        assert!(!format!("{parsed:?}").contains("PRIVATE"));
        let body: String = key.pkcs8_pem.lines().nth(1).expect("pem body").to_owned();
        let err = kid(SigningAlgorithm::EdDSA, &key.pkcs8_pem).expect_err("wrong type");
        let message = format!("{err} {err:?}");
        assert!(!message.contains(&body[..20]), "{message}");
    }
}
