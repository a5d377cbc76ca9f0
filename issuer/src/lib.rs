//! Sigil's issuer: the token, JWKS, discovery and introspection endpoints
//! of DESIGN.md §6, served from in-memory indexes that cluster watches or
//! standalone manifests feed.

pub mod cli;
pub mod http;
pub mod index;
pub mod inject;
pub mod logsafe;
pub mod metrics;
pub mod source;
pub mod state;

#[cfg(test)]
mod api_tests;
