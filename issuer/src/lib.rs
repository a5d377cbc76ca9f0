//! Sigil's issuer: the token, JWKS, discovery and introspection endpoints
//! of DESIGN.md §6, served from in-memory indexes that cluster watches or
//! standalone manifests feed.

pub mod admission;
pub mod agent;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod discovery;
pub mod introspect;
pub mod jwks;
pub mod metrics;
pub mod oauth_error;
pub mod ratelimit;
pub mod standalone;
pub mod store;
pub mod token;
pub mod webhook;

#[cfg(test)]
mod api_tests;
