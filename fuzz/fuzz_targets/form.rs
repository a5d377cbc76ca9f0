//! `parse_form` (token and introspection bodies) on arbitrary bytes.
//!
//! Invariants: parameters Sigil keeps are never empty; `audience` values
//! never hold a space (they are split on it); re-encoding what was parsed
//! and parsing again gives the same form (nothing is invented or lost);
//! errors are the fixed "parameter X is repeated" text, never request bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_issuer::http::form::{TokenForm, parse_form};

fn singles(form: &TokenForm) -> [(&'static str, &Option<String>); 8] {
    [
        ("grant_type", &form.grant_type),
        ("scope", &form.scope),
        ("client_id", &form.client_id),
        ("client_secret", &form.client_secret),
        ("client_assertion_type", &form.client_assertion_type),
        ("client_assertion", &form.client_assertion),
        ("token", &form.token),
        ("token_type_hint", &form.token_type_hint),
    ]
}

fuzz_target!(|data: &[u8]| {
    let form = match parse_form(data) {
        Ok(form) => form,
        Err(error) => {
            let text = &error.description;
            assert!(
                text.len() <= 64
                    && text.starts_with("parameter ")
                    && text.ends_with(" is repeated"),
                "unexpected error text {text:?}"
            );
            return;
        }
    };
    let mut encoded = form_urlencoded::Serializer::new(String::new());
    for (name, value) in singles(&form) {
        if let Some(value) = value {
            assert!(!value.is_empty(), "{name} kept empty");
            encoded.append_pair(name, value);
        }
    }
    for audience in &form.audience {
        assert!(
            !audience.is_empty() && !audience.contains(' '),
            "audience {audience:?}"
        );
        encoded.append_pair("audience", audience);
    }
    for resource in &form.resource {
        assert!(!resource.is_empty(), "empty resource kept");
        encoded.append_pair("resource", resource);
    }
    let again = parse_form(encoded.finish().as_bytes()).expect("a re-encoded form parses");
    assert_eq!(again, form, "parse(encode(parse(x))) != parse(x)");
});
