//! Standalone manifests (`source::standalone::parse_documents`, what
//! `issuer --manifests` reads) on arbitrary UTF-8.
//!
//! Invariants: whatever is accepted passes the CRD rules (`validate`) and
//! every accepted client has a namespace.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sigil_crds::validate::{validate_oauth_client, validate_signing_key};
use sigil_issuer::source::standalone::{Manifests, parse_documents};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut manifests = Manifests::default();
    if parse_documents(Path::new("fuzz.yaml"), text, &mut manifests).is_err() {
        return;
    }
    for client in &manifests.clients {
        assert!(client.metadata.namespace.is_some());
        assert!(
            validate_oauth_client(client).is_ok(),
            "accepted an invalid client"
        );
    }
    for key in &manifests.signing_keys {
        assert!(validate_signing_key(key).is_ok(), "accepted an invalid key");
    }
});
