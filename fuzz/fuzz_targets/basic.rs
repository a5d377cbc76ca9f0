//! `parse_basic` (the `Authorization: Basic` header) on arbitrary bytes.
//!
//! Invariants: an accepted header yields a non-empty id and secret that
//! encode back to a header giving the same pair; errors are fixed texts
//! (`Cow::Borrowed`), so they can never carry the presented credentials.
#![no_main]

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use sigil_issuer::http::client_auth::parse_basic;

fn encode(part: &str) -> String {
    form_urlencoded::byte_serialize(part.as_bytes()).collect()
}

fuzz_target!(|data: &[u8]| {
    match parse_basic(data) {
        Ok((id, secret)) => {
            assert!(!id.is_empty() && !secret.is_empty());
            let header = format!(
                "Basic {}",
                STANDARD.encode(format!("{}:{}", encode(&id), encode(&secret)))
            );
            let again = parse_basic(header.as_bytes()).expect("a re-encoded header parses");
            assert_eq!(again, (id, secret));
        }
        Err(error) => assert!(
            matches!(error.description, Cow::Borrowed(_)),
            "error text built at run time: {:?}",
            error.description
        ),
    }
});
