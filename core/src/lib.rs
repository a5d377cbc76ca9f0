//! Sigil's kube-free core: signing keys (one aws-lc-rs implementation for
//! generation, parsing, signing, JWK and `kid`), client secrets and their
//! verifiers, the issuer URL with every endpoint derived from it, and
//! crash-safe file writes.
//!
//! Nothing here knows Kubernetes or HTTP servers: it must never depend on
//! kube, k8s-openapi, axum or the other Sigil crates; they depend on it.

pub mod algorithm;
pub mod digest;
pub mod fs;
pub mod issuer_url;
pub mod keys;
pub mod secret;

pub use algorithm::SigningAlgorithm;
pub use issuer_url::{IssuerUrl, IssuerUrlError};
