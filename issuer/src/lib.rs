//! Sigil's issuer: the token, JWKS, discovery and introspection endpoints
//! of DESIGN.md §6, served from in-memory indexes that cluster watches or
//! standalone manifests feed. Only `sigil-bench` and the tests depend on it;
//! the operator and the agent never do.
//!
//! [`http`] serves requests from the [`index`]; [`source`] fills the index
//! (cluster or standalone); [`federation`] checks ServiceAccount tokens
//! (`federated_jwt`); [`inject`] is the pod webhook; [`state`] holds
//! what handlers share; [`cli`] wires it all.

pub mod audiences;
pub mod cli;
pub mod federation;
pub mod http;
pub mod index;
pub mod inject;
pub mod logsafe;
pub mod metrics;
pub mod source;
pub mod state;

#[cfg(test)]
mod api_tests;
