//! `private_key_jwt` client authentication on arbitrary assertion strings,
//! through `authenticate_request` (the entry point the token and
//! introspection handlers use, so audience-rule changes inside it need no
//! change here). The store holds one `private_key_jwt` client with ES256,
//! EdDSA and RS256 keys generated at start-up, so no input can carry a
//! valid signature.
//!
//! Invariants: authentication always fails, with `invalid_client` and a
//! fixed error text (`Cow::Borrowed`), so it never echoes the assertion.
#![no_main]

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use sigil_core::keys::{ParsedKey, generate_pkcs8_der};
use sigil_crds::{OAuthClient, SigningAlgorithm};
use sigil_issuer::http::client_auth::{JWT_BEARER_ASSERTION, authenticate_request};
use sigil_issuer::http::error::ErrorCode;
use sigil_issuer::http::form::{FormRequest, TokenForm};
use sigil_issuer::index::{Store, TokenTyp};
use sigil_issuer::metrics::Metrics;
use sigil_issuer::source::standalone;
use sigil_issuer::state::{App, Settings};

const CLIENT_ID: &str = "jwt-client.fuzz";
/// The failure limiter remembers every client id it sees; a fresh App
/// every this many runs keeps memory flat.
const RUNS_PER_APP: u32 = 10_000;

static STORE: LazyLock<Arc<Store>> = LazyLock::new(|| {
    let keys: Vec<serde_json::Value> = [
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::RS256,
    ]
    .into_iter()
    .map(|algorithm| {
        let key = ParsedKey::from_pkcs8_der(
            algorithm,
            &generate_pkcs8_der(algorithm, 2048).expect("generate"),
        )
        .expect("parse");
        let mut public = key.public_jwk(&key.thumbprint());
        public.as_object_mut().expect("object").remove("use");
        public
    })
    .collect();
    let mut client = OAuthClient::new(
        "jwt-client",
        serde_json::from_value(serde_json::json!({
            "scopes": ["a"], "audiences": ["x"],
            "authMethods": ["private_key_jwt"],
            "jwks": {"keys": keys},
        }))
        .expect("spec"),
    );
    client.metadata.namespace = Some("fuzz".into());
    let store = Arc::new(Store::new("default"));
    standalone::load_clients(&store, &[client], &Default::default());
    assert_eq!(store.client(CLIENT_ID).expect("loaded").jwks.len(), 3);
    store
});

fn new_app() -> App {
    let settings = Settings {
        token_typ: TokenTyp::AtJwt,
        // Never rate-limit: every input must reach the assertion checks.
        failed_auth_per_minute: NonZeroU32::MAX,
        ..Settings::new(sigil_core::IssuerUrl::parse("https://sigil.example").expect("url"))
    };
    App::new(STORE.clone(), Arc::new(Metrics::new()), &settings).expect("app")
}

thread_local! {
    static APP: RefCell<(App, u32)> = RefCell::new((new_app(), 0));
}

fuzz_target!(|data: &[u8]| {
    // First byte: whether the body names the client (so every assertion
    // reaches signature checks) or it is read from the assertion's `sub`.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let assertion = String::from_utf8_lossy(rest).into_owned();
    if assertion.is_empty() {
        return; // parse_form drops empty parameters
    }
    let request = FormRequest {
        source: Some(IpAddr::from([127, 0, 0, 1])),
        authorization: None,
        form: TokenForm {
            grant_type: Some("client_credentials".into()),
            client_id: (flags & 1 == 1).then(|| CLIENT_ID.to_owned()),
            client_assertion_type: Some(JWT_BEARER_ASSERTION.into()),
            client_assertion: Some(assertion.clone()),
            ..TokenForm::default()
        },
    };
    APP.with_borrow_mut(|(app, runs)| {
        *runs += 1;
        if *runs >= RUNS_PER_APP {
            *app = new_app();
            *runs = 0;
        }
        let now = sigil_issuer::http::token::unix_now();
        let result = authenticate_request(app, &request, now);
        let error = result.expect_err("an assertion without a valid signature authenticated");
        assert_eq!(error.code, ErrorCode::InvalidClient, "{error:?}");
        // Fixed texts only: nothing from the assertion can reach the caller.
        assert!(
            matches!(error.description, Cow::Borrowed(_)),
            "error text built at run time: {:?}",
            error.description
        );
    });
});
