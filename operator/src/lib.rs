//! The Sigil operator: reconciles `OAuthClient` into a credentials Secret
//! and `SigningKey` into a rotated ring of private keys (DESIGN.md §3–§4).
//! A binary crate in all but name: nothing else may depend on it.
//!
//! Layout (after kube-rs `controller-rs`): [`config`] holds the command line,
//! [`controller`] wires watches, stores and the two controllers,
//! [`reconcile`] holds one module per resource, [`issuer_ca`] the CA bundle
//! client Secrets carry, [`leader`] the Lease-based election, [`metrics`] and [`health`] the `/metrics`, `/healthz` and
//! `/readyz` endpoints.

pub mod client_index;
pub mod config;
pub mod context;
pub mod controller;
#[cfg(test)]
mod fixtures;
pub mod grants;
pub mod health;
pub mod issuer_ca;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod watch;
pub mod webhook_tls;

pub use context::{Context, Error};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "sigil-operator";
