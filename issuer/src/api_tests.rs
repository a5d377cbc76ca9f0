//! One test per RFC rule of the HTTP API, through the real axum router
//! (`tower::ServiceExt::oneshot`, no network).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sigil_crds::{KeyState, OAuthClient, SigningAlgorithm};
use tower::ServiceExt;

use crate::index::test_support::ring_with_keys;
use crate::index::{ClientEntry, Store, TokenTyp};
use crate::metrics::Metrics;
use crate::source::standalone;
use crate::state::{App, Settings};
use sigil_core::keys::{ParsedKey, generate_pkcs8_der};

const ISSUER: &str = "https://sigil.example";
const TASK_ID: &str = "task-service.tasks";
const TASK_SECRET: &str = "s3cr3t-Of-The-Task-Service_0123456789abcdefABC";

struct Fixture {
    store: Arc<Store>,
    app: Arc<App>,
    /// Private key of the `jwt-client`, for assertions.
    assertion_key: ParsedKey,
    assertion_kid: String,
}

fn oauth_client(name: &str, spec: serde_json::Value) -> OAuthClient {
    let mut client = OAuthClient::new(name, serde_json::from_value(spec).expect("spec"));
    client.metadata.namespace = Some("tasks".into());
    client
}

/// The task service as the introspecting client (its own tokens).
fn as_task() -> crate::http::introspect::Caller<'static> {
    crate::http::introspect::Caller {
        client_id: TASK_ID,
        namespace: "tasks",
    }
}

fn secrets(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn fixture_with(settings: Settings) -> Fixture {
    let store = Arc::new(Store::new("default"));
    store.set_ring(ring_with_keys(
        "default",
        SigningAlgorithm::ES256,
        &[KeyState::Retired, KeyState::Active, KeyState::Pending],
    ));
    store.set_ring(ring_with_keys(
        "ed",
        SigningAlgorithm::EdDSA,
        &[KeyState::Active],
    ));
    store.mark_synced();

    let assertion_key = ParsedKey::from_pkcs8_der(
        SigningAlgorithm::ES256,
        &generate_pkcs8_der(SigningAlgorithm::ES256, 0).expect("key"),
    )
    .expect("parse");
    let assertion_kid = assertion_key.thumbprint();
    let mut public = assertion_key.public_jwk(&assertion_kid);
    public.as_object_mut().expect("object").remove("use");

    let secrets = secrets(&[
        (TASK_ID, TASK_SECRET),
        ("post-only.tasks", "post-only-secret"),
        ("disabled.tasks", "disabled-secret"),
        ("edwards.tasks", "edwards-secret"),
        ("orphan.tasks", "orphan-secret"),
    ]);
    let clients = [
        oauth_client(
            "task-service",
            serde_json::json!({
                "scopes": ["event.view", "event.create", "file.view"],
                "audiences": ["event", "file"],
            }),
        ),
        oauth_client(
            "post-only",
            serde_json::json!({"scopes": ["a"], "audiences": ["x"], "authMethods": ["client_secret_post"]}),
        ),
        oauth_client(
            "disabled",
            serde_json::json!({"scopes": ["a"], "audiences": ["x"], "disabled": true}),
        ),
        oauth_client(
            "edwards",
            serde_json::json!({
                "scopes": ["a"], "audiences": ["x"], "signingKey": "ed", "tokenTTL": "10m",
                "additionalClaims": {"stt": 1, "tenant": "blue"},
            }),
        ),
        oauth_client(
            "orphan",
            serde_json::json!({"scopes": ["a"], "audiences": ["x"], "signingKey": "missing"}),
        ),
        oauth_client(
            "jwt-client",
            serde_json::json!({
                "scopes": ["a"], "audiences": ["x"],
                "authMethods": ["private_key_jwt"],
                "jwks": {"keys": [public]},
            }),
        ),
    ];
    standalone::load_clients(&store, &clients, &secrets);
    let app = Arc::new(App::new(store.clone(), Arc::new(Metrics::new()), &settings).expect("app"));
    Fixture {
        store,
        app,
        assertion_key,
        assertion_kid,
    }
}

fn settings() -> Settings {
    Settings::new(sigil_core::IssuerUrl::parse(ISSUER).expect("a valid URL"))
}

fn fixture() -> Fixture {
    fixture_with(settings())
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: serde_json::Value,
    raw: Vec<u8>,
}

async fn send(router: Router, request: Request<Body>) -> Reply {
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let raw = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body")
        .to_vec();
    let body = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        body,
        raw,
    }
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn form_request(path: &str, form: &str, authorization: Option<&str>, ip: [u8; 4]) -> Request<Body> {
    let mut builder =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    let mut request = builder.body(Body::from(form.to_owned())).expect("request");
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((ip, 40000))));
    request
}

async fn token(f: &Fixture, form: &str, authorization: Option<&str>) -> Reply {
    send(
        crate::http::api_router(f.app.clone()),
        form_request("/oauth2/token", form, authorization, [10, 0, 0, 1]),
    )
    .await
}

async fn task_token(f: &Fixture, extra: &str) -> Reply {
    token(
        f,
        &format!("grant_type=client_credentials{extra}"),
        Some(&basic(TASK_ID, TASK_SECRET)),
    )
    .await
}

fn decode_part(part: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
}

fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    (decode_part(parts[0]), decode_part(parts[1]))
}

fn assert_oauth_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(
        reply.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&reply.raw)
    );
    assert_eq!(reply.body["error"], code);
    assert!(reply.body["error_description"].is_string());
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
}

// ------------------------------------------------------------ token: success

#[tokio::test]
async fn basic_auth_grants_every_allowed_scope_and_audience_by_default() {
    let f = fixture();
    let reply = task_token(&f, "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["expires_in"], 3600);
    assert!(reply.body["expires_in"].is_u64());
    assert_eq!(reply.body["scope"], "event.view event.create file.view");
    let (_, claims) = jwt_parts(reply.body["access_token"].as_str().expect("token"));
    assert_eq!(claims["aud"], serde_json::json!(["event", "file"]));
}

#[tokio::test]
async fn client_secret_post_grants_a_token() {
    let f = fixture();
    let reply = token(
        &f,
        &format!("grant_type=client_credentials&client_id={TASK_ID}&client_secret={TASK_SECRET}"),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["token_type"], "Bearer");
}

#[tokio::test]
async fn basic_credentials_are_form_urlencoded_before_base64() {
    // RFC 6749 §2.3.1: clients that encode ('-' as %2D) and clients that do
    // not both work.
    let f = fixture();
    let encoded = basic("task%2Dservice.tasks", &TASK_SECRET.replace('-', "%2D"));
    let reply = token(&f, "grant_type=client_credentials", Some(&encoded)).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn body_client_id_may_repeat_the_basic_id_but_not_contradict_it() {
    let f = fixture();
    let same = token(
        &f,
        &format!("grant_type=client_credentials&client_id={TASK_ID}"),
        Some(&basic(TASK_ID, TASK_SECRET)),
    )
    .await;
    assert_eq!(same.status, StatusCode::OK);
    let other = token(
        &f,
        "grant_type=client_credentials&client_id=someone.else",
        Some(&basic(TASK_ID, TASK_SECRET)),
    )
    .await;
    assert_oauth_error(&other, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn access_token_follows_rfc9068() {
    let f = fixture();
    let reply = task_token(&f, "").await;
    let access_token = reply.body["access_token"].as_str().expect("token");
    let (header, claims) = jwt_parts(access_token);
    let ring = f.store.ring(None).expect("ring");
    let active = ring.active.as_ref().expect("active");
    assert_eq!(
        header,
        serde_json::json!({"alg": "ES256", "kid": active.kid, "typ": "at+jwt"})
    );
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], TASK_ID);
    assert_eq!(claims["client_id"], TASK_ID);
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert_eq!(claims["exp"].as_i64(), Some(iat + 3600));
    let jti = URL_SAFE_NO_PAD
        .decode(claims["jti"].as_str().expect("jti"))
        .expect("b64");
    assert_eq!(jti.len(), 16, "128-bit jti");
    assert_eq!(claims["scope"], "event.view event.create file.view");
    assert_eq!(
        claims["scp"],
        serde_json::json!(["event.view", "event.create", "file.view"])
    );

    // Verifiable with the published JWKS by an independent library.
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(&f.store.jwks().body).expect("jwks");
    let jwk = jwks.find(&active.kid).expect("kid published");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["event"]);
    validation.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<serde_json::Value>(
        access_token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).expect("jwk"),
        &validation,
    )
    .expect("verifies");
}

#[tokio::test]
async fn two_tokens_get_different_jti() {
    let f = fixture();
    let a = jwt_parts(
        task_token(&f, "").await.body["access_token"]
            .as_str()
            .expect("t"),
    )
    .1;
    let b = jwt_parts(
        task_token(&f, "").await.body["access_token"]
            .as_str()
            .expect("t"),
    )
    .1;
    assert_ne!(a["jti"], b["jti"]);
}

#[tokio::test]
async fn scope_and_audience_narrow_to_exactly_what_was_asked() {
    let f = fixture();
    let reply = task_token(&f, "&scope=event.create&audience=event").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["scope"], "event.create");
    let (_, claims) = jwt_parts(reply.body["access_token"].as_str().expect("token"));
    assert_eq!(claims["aud"], "event", "one audience is a string");
    assert_eq!(claims["scope"], "event.create");
    assert_eq!(claims["scp"], serde_json::json!(["event.create"]));
}

#[tokio::test]
async fn resource_parameter_narrows_the_audience() {
    // RFC 8707: `resource` may repeat.
    let f = fixture();
    let reply = task_token(&f, "&resource=file").await;
    assert_eq!(reply.status, StatusCode::OK);
    let (_, claims) = jwt_parts(reply.body["access_token"].as_str().expect("token"));
    assert_eq!(claims["aud"], "file");
    let both = task_token(&f, "&resource=file&resource=event").await;
    let (_, claims) = jwt_parts(both.body["access_token"].as_str().expect("token"));
    assert_eq!(claims["aud"], serde_json::json!(["file", "event"]));
}

#[tokio::test]
async fn per_client_ttl_signing_key_and_additional_claims() {
    let f = fixture();
    let reply = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic("edwards.tasks", "edwards-secret")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["expires_in"], 600);
    let (header, claims) = jwt_parts(reply.body["access_token"].as_str().expect("token"));
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(claims["stt"], 1);
    assert_eq!(claims["tenant"], "blue");
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        600
    );
}

#[tokio::test]
async fn token_typ_setting_switches_to_jwt() {
    let f = fixture_with(Settings {
        token_typ: TokenTyp::Jwt,
        ..settings()
    });
    let reply = task_token(&f, "").await;
    let (header, _) = jwt_parts(reply.body["access_token"].as_str().expect("token"));
    assert_eq!(header["typ"], "JWT");
}

// ------------------------------------------------------------ token: errors

#[tokio::test]
async fn unknown_scope_is_invalid_scope() {
    let f = fixture();
    let reply = task_token(&f, "&scope=file.delete").await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_scope");
}

#[tokio::test]
async fn unknown_audience_is_invalid_target() {
    let f = fixture();
    let reply = task_token(&f, "&audience=payments").await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_target");
    let reply = task_token(&f, "&resource=https%3A%2F%2Fpayments.example").await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_target");
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let f = fixture();
    let big = format!(
        "grant_type=client_credentials&pad={}",
        "p".repeat(64 * 1024)
    );
    // Its length declared.
    let reply = token(&f, &big, Some(&basic(TASK_ID, TASK_SECRET))).await;
    assert_oauth_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request");
    // Chunked: refused when it passes the limit.
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok(big[..40_000].to_owned()), Ok(big[40_000..].to_owned())];
    let mut request = form_request(
        "/oauth2/token",
        "",
        Some(&basic(TASK_ID, TASK_SECRET)),
        [10, 0, 0, 1],
    );
    *request.body_mut() = Body::from_stream(futures::stream::iter(chunks));
    let reply = send(crate::http::api_router(f.app.clone()), request).await;
    assert_oauth_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request");
    // Right at the limit, the form is read.
    let padded = "grant_type=client_credentials&pad=";
    let at_limit = format!("{padded}{}", "p".repeat(64 * 1024 - padded.len()));
    let reply = token(&f, &at_limit, Some(&basic(TASK_ID, TASK_SECRET))).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_secret_is_401_invalid_client_with_www_authenticate() {
    let f = fixture();
    let reply = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic(TASK_ID, "wrong")),
    )
    .await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(
        reply.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii")
            .starts_with("Basic realm=")
    );
}

#[tokio::test]
async fn unknown_client_and_wrong_secret_are_indistinguishable() {
    let f = fixture();
    let wrong = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic(TASK_ID, "wrong")),
    )
    .await;
    let unknown = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic("nobody.nowhere", "wrong")),
    )
    .await;
    assert_eq!(wrong.status, unknown.status);
    assert_eq!(wrong.raw, unknown.raw);
    let mut a = wrong.headers.clone();
    let mut b = unknown.headers.clone();
    a.remove(header::CONTENT_LENGTH);
    b.remove(header::CONTENT_LENGTH);
    assert_eq!(a, b);
    let post = token(
        &f,
        "grant_type=client_credentials&client_id=nobody.nowhere&client_secret=wrong",
        None,
    )
    .await;
    assert_eq!(post.raw, wrong.raw);
}

#[test]
fn secret_check_does_the_same_work_for_unknown_clients() {
    // Both paths hash the secret and run a constant-time comparison; this
    // pins the results (timing equality is by construction).
    let f = fixture();
    let client = f.store.client(TASK_ID).expect("client");
    let now = crate::http::token::unix_now();
    assert!(crate::http::client_auth::verify_secret(
        Some(&client),
        TASK_SECRET,
        now
    ));
    assert!(!crate::http::client_auth::verify_secret(
        Some(&client),
        "wrong",
        now
    ));
    assert!(!crate::http::client_auth::verify_secret(
        None,
        TASK_SECRET,
        now
    ));
}

#[tokio::test]
async fn expired_secret_verifier_is_refused_and_the_rotated_one_works() {
    let f = fixture();
    let old = "old-secret";
    let new = "new-secret";
    let now = crate::http::token::unix_now();
    let mut client = oauth_client(
        "rotating",
        serde_json::json!({"scopes": ["a"], "audiences": ["x"]}),
    );
    let time = |t: i64| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(t).expect("ts"),
        )
    };
    client.status = Some(sigil_crds::OAuthClientStatus {
        secret_verifiers: vec![
            sigil_crds::SecretVerifier {
                sha256: sigil_crds::secret_verifier(new),
                created_at: time(now),
                expires_at: None,
            },
            sigil_crds::SecretVerifier {
                sha256: sigil_crds::secret_verifier(old),
                created_at: time(now - 100),
                expires_at: Some(time(now - 1)),
            },
        ],
        client_id: Some(client.client_id()),
        grant: Some(sigil_crds::grant::as_requested(&client.spec)),
        ..Default::default()
    });
    f.store.upsert_client(&client);
    let ok = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic("rotating.tasks", new)),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let expired = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic("rotating.tasks", old)),
    )
    .await;
    assert_oauth_error(&expired, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn missing_grant_type_is_invalid_request() {
    let f = fixture();
    let reply = token(&f, "scope=a", Some(&basic(TASK_ID, TASK_SECRET))).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn other_grant_type_is_unsupported_grant_type() {
    let f = fixture();
    let reply = token(
        &f,
        "grant_type=password&username=a&password=b",
        Some(&basic(TASK_ID, TASK_SECRET)),
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "unsupported_grant_type");
}

#[tokio::test]
async fn two_authentication_methods_are_invalid_request() {
    let f = fixture();
    let reply = token(
        &f,
        &format!("grant_type=client_credentials&client_id={TASK_ID}&client_secret={TASK_SECRET}"),
        Some(&basic(TASK_ID, TASK_SECRET)),
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn no_client_authentication_is_invalid_client() {
    let f = fixture();
    let reply = token(
        &f,
        &format!("grant_type=client_credentials&client_id={TASK_ID}"),
        None,
    )
    .await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(reply.headers.contains_key(header::WWW_AUTHENTICATE));
}

#[tokio::test]
async fn repeated_parameter_is_invalid_request() {
    let f = fixture();
    let reply = task_token(&f, "&scope=a&scope=b").await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn empty_parameter_counts_as_omitted() {
    // RFC 6749 §3.1.
    let f = fixture();
    let reply = task_token(&f, "&scope=&audience=").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["scope"], "event.view event.create file.view");
}

#[tokio::test]
async fn non_form_body_is_invalid_request() {
    let f = fixture();
    let mut request = Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, basic(TASK_ID, TASK_SECRET))
        .body(Body::from(r#"{"grant_type":"client_credentials"}"#))
        .expect("request");
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 1))));
    let reply = send(crate::http::api_router(f.app.clone()), request).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn disabled_client_is_unauthorized_client() {
    let f = fixture();
    let reply = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic("disabled.tasks", "disabled-secret")),
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "unauthorized_client");
}

#[tokio::test]
async fn auth_method_not_in_spec_is_invalid_client() {
    let f = fixture();
    let basic_reply = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic("post-only.tasks", "post-only-secret")),
    )
    .await;
    assert_oauth_error(&basic_reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let post = token(
        &f,
        "grant_type=client_credentials&client_id=post-only.tasks&client_secret=post-only-secret",
        None,
    )
    .await;
    assert_eq!(post.status, StatusCode::OK);
}

#[tokio::test]
async fn no_active_signing_key_is_503_with_a_section_5_2_code_and_retry_after() {
    let f = fixture();
    let reply = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic("orphan.tasks", "orphan-secret")),
    )
    .await;
    // RFC 6749 §5.2 has no "try later" code; temporarily_unavailable is
    // an authorization-endpoint code.
    assert_oauth_error(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "unauthorized_client",
    );
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
    assert!(
        reply.body["error_description"]
            .as_str()
            .expect("text")
            .contains("retry")
    );
}

async fn token_from(f: &Fixture, authorization: &str, ip: [u8; 4]) -> Reply {
    send(
        crate::http::api_router(f.app.clone()),
        form_request(
            "/oauth2/token",
            "grant_type=client_credentials",
            Some(authorization),
            ip,
        ),
    )
    .await
}

#[tokio::test]
async fn a_source_over_budget_gets_429_for_bad_credentials_but_200_for_good_ones() {
    let f = fixture_with(Settings {
        failed_auth_per_minute: NonZeroU32::new(30).expect("nonzero"),
        ..settings()
    });
    let source = [10, 9, 9, 9];
    for attempt in 0..30 {
        let reply = token_from(&f, &basic(TASK_ID, "wrong"), source).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let limited = token_from(&f, &basic(TASK_ID, "wrong"), source).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // An RFC 6749 §5.2 code, and the description says why and when.
    assert_eq!(limited.body["error"], "invalid_client");
    let description = limited.body["error_description"].as_str().expect("text");
    assert!(description.contains("too many failed"), "{description}");
    let retry: u64 = limited.headers[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry >= 1);
    assert!(description.contains(&format!("retry after {retry} s")));
    // Correct credentials from the same source are never refused.
    let right = token_from(&f, &basic(TASK_ID, TASK_SECRET), source).await;
    assert_eq!(right.status, StatusCode::OK);
    let other_client = token_from(&f, &basic("edwards.tasks", "edwards-secret"), source).await;
    assert_eq!(other_client.status, StatusCode::OK);
    // Unknown clients count as failures too.
    let unknown = token_from(&f, &basic("nobody", "x"), source).await;
    assert_eq!(unknown.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn failures_for_a_client_id_never_lock_out_the_real_client() {
    let f = fixture_with(Settings {
        failed_auth_per_minute: NonZeroU32::new(5).expect("nonzero"),
        ..settings()
    });
    // 100 wrong secrets for the victim's id from 100 addresses…
    for i in 0..100u8 {
        let reply = token_from(&f, &basic(TASK_ID, "guess"), [172, 16, 0, i]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    // … and 100 from its own address (a NAT shared with a misconfigured
    // client).
    let own = [10, 1, 1, 1];
    for _ in 0..100 {
        let reply = token_from(&f, &basic(TASK_ID, "stale"), own).await;
        assert!(matches!(
            reply.status,
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
        ));
    }
    for ip in [own, [10, 2, 2, 2], [172, 16, 0, 7]] {
        let reply = token_from(&f, &basic(TASK_ID, TASK_SECRET), ip).await;
        assert_eq!(reply.status, StatusCode::OK, "from {ip:?}");
    }
    // The same for private_key_jwt: failures naming its sub do not block it.
    for i in 0..20u8 {
        let forged = format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#));
        let _ = send(
            crate::http::api_router(f.app.clone()),
            form_request(
                "/oauth2/token",
                &format!("grant_type=client_credentials&client_id=jwt-client.tasks&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={forged}"),
                None,
                [10, 0, 0, 1 + i % 2],
            ),
        )
        .await;
    }
    let reply = assertion_token(&f, &assertion(&f, assertion_claims(ISSUER))).await;
    assert_eq!(reply.status, StatusCode::OK);
}

// ------------------------------------------------------------ private_key_jwt

fn assertion(f: &Fixture, claims: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"alg": "ES256", "kid": f.assertion_kid, "typ": "JWT"}).to_string(),
    );
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = f.assertion_key.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn assertion_claims(aud: &str) -> serde_json::Value {
    let now = crate::http::token::unix_now();
    serde_json::json!({
        "iss": "jwt-client.tasks", "sub": "jwt-client.tasks", "aud": aud,
        "exp": now + 300, "iat": now, "jti": crate::http::token::new_jti(),
    })
}

async fn assertion_token(f: &Fixture, assertion: &str) -> Reply {
    token(
        f,
        &format!(
            "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
        ),
        None,
    )
    .await
}

#[tokio::test]
async fn private_key_jwt_grants_a_token() {
    let f = fixture();
    let reply = assertion_token(&f, &assertion(&f, assertion_claims(ISSUER))).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.raw)
    );
    let (_, claims) = jwt_parts(reply.body["access_token"].as_str().expect("token"));
    assert_eq!(claims["sub"], "jwt-client.tasks");
    // An array holding only the issuer identifier is the same audience.
    let mut claims = assertion_claims(ISSUER);
    claims["aud"] = serde_json::json!([ISSUER]);
    let reply = assertion_token(&f, &assertion(&f, claims)).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn private_key_jwt_replay_is_refused() {
    let f = fixture();
    let once = assertion(&f, assertion_claims(ISSUER));
    assert_eq!(assertion_token(&f, &once).await.status, StatusCode::OK);
    let replayed = assertion_token(&f, &once).await;
    assert_oauth_error(&replayed, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn private_key_jwt_checks_aud_iss_sub_exp_nbf_iat_and_jti() {
    let f = fixture();
    let endpoint = ISSUER.to_owned();
    let now = crate::http::token::unix_now();
    let cases: Vec<(&str, serde_json::Value)> = vec![
        (
            "wrong aud",
            assertion_claims("https://elsewhere.example/token"),
        ),
        // draft-ietf-oauth-rfc7523bis: the issuer identifier alone.
        (
            "aud is the token endpoint",
            assertion_claims(&format!("{ISSUER}/oauth2/token")),
        ),
        (
            "aud is the introspection endpoint",
            assertion_claims(&format!("{ISSUER}/oauth2/introspect")),
        ),
        ("aud array with the issuer and more", {
            let mut c = assertion_claims(&endpoint);
            c["aud"] = serde_json::json!([ISSUER, "https://other.example"]);
            c
        }),
        ("aud array with the token endpoint", {
            let mut c = assertion_claims(&endpoint);
            c["aud"] = serde_json::json!([format!("{ISSUER}/oauth2/token")]);
            c
        }),
        ("empty aud array", {
            let mut c = assertion_claims(&endpoint);
            c["aud"] = serde_json::json!([]);
            c
        }),
        ("nbf beyond the leeway", {
            let mut c = assertion_claims(&endpoint);
            c["nbf"] = (now + 120).into();
            c
        }),
        ("iat beyond the leeway", {
            let mut c = assertion_claims(&endpoint);
            c["iat"] = (now + 120).into();
            c
        }),
        ("jti over 256 bytes", {
            let mut c = assertion_claims(&endpoint);
            c["jti"] = "j".repeat(257).into();
            c
        }),
        ("iss differs from sub", {
            let mut c = assertion_claims(&endpoint);
            c["iss"] = "someone.else".into();
            c
        }),
        ("expired", {
            let mut c = assertion_claims(&endpoint);
            c["exp"] = (crate::http::token::unix_now() - 600).into();
            c
        }),
        ("no jti", {
            let mut c = assertion_claims(&endpoint);
            c.as_object_mut().expect("object").remove("jti");
            c
        }),
        ("lifetime over 1h", {
            let mut c = assertion_claims(&endpoint);
            c["exp"] = (crate::http::token::unix_now() + 7200).into();
            c
        }),
    ];
    for (case, claims) in cases {
        let reply = assertion_token(&f, &assertion(&f, claims)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{case}");
        assert_eq!(reply.body["error"], "invalid_client", "{case}");
    }
    // Within the leeway, nbf and iat are fine; a 256-byte jti too.
    let mut c = assertion_claims(&endpoint);
    c["nbf"] = (now + 30).into();
    c["iat"] = (now + 30).into();
    c["jti"] = "j".repeat(256).into();
    let reply = assertion_token(&f, &assertion(&f, c)).await;
    assert_eq!(reply.status, StatusCode::OK);
    // A signature by another key.
    let other = ParsedKey::from_pkcs8_der(
        SigningAlgorithm::ES256,
        &generate_pkcs8_der(SigningAlgorithm::ES256, 0).expect("key"),
    )
    .expect("parse");
    let forged = Fixture {
        assertion_key: other,
        assertion_kid: f.assertion_kid.clone(),
        store: f.store.clone(),
        app: f.app.clone(),
    };
    let reply = assertion_token(&f, &assertion(&forged, assertion_claims(&endpoint))).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn secret_client_cannot_use_private_key_jwt_and_vice_versa() {
    let f = fixture();
    let secret_for_jwt_client = token(
        &f,
        "grant_type=client_credentials&client_id=jwt-client.tasks&client_secret=anything",
        None,
    )
    .await;
    assert_oauth_error(
        &secret_for_jwt_client,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
}

fn assertion_with_header(
    f: &Fixture,
    header: serde_json::Value,
    claims: serde_json::Value,
) -> String {
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = f.assertion_key.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test]
async fn private_key_jwt_refuses_any_crit_header() {
    let f = fixture();
    for crit in [
        serde_json::json!(["exp"]),
        serde_json::json!(["b64"]),
        serde_json::json!([]),
    ] {
        let jwt = assertion_with_header(
            &f,
            serde_json::json!({"alg": "ES256", "kid": f.assertion_kid, "crit": crit, "exp": 1}),
            assertion_claims(ISSUER),
        );
        let reply = assertion_token(&f, &jwt).await;
        assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let jwt = assertion_with_header(
        &f,
        serde_json::json!({"alg": "ES256", "kid": f.assertion_kid}),
        assertion_claims(ISSUER),
    );
    assert_eq!(assertion_token(&f, &jwt).await.status, StatusCode::OK);
}

#[test]
fn unknown_private_key_jwt_clients_cost_a_signature_check_like_known_ones() {
    use crate::http::client_auth::{Credentials, SIGNATURE_CHECKS, authenticate};
    let f = fixture();
    let now = crate::http::token::unix_now();
    let checks = |assertion: String| {
        let before = SIGNATURE_CHECKS.with(|c| c.get());
        let result = authenticate(
            &f.store,
            &Credentials::Assertion {
                assertion,
                client_id: None,
            },
            ISSUER,
            &f.app.replay,
            now,
        );
        assert!(result.is_err());
        SIGNATURE_CHECKS.with(|c| c.get()) - before
    };
    let other = ParsedKey::from_pkcs8_der(
        SigningAlgorithm::ES256,
        &generate_pkcs8_der(SigningAlgorithm::ES256, 0).expect("key"),
    )
    .expect("parse");
    let forger = Fixture {
        assertion_key: other,
        assertion_kid: f.assertion_kid.clone(),
        store: f.store.clone(),
        app: f.app.clone(),
    };
    // A known client, signature by another key.
    assert_eq!(checks(assertion(&forger, assertion_claims(ISSUER))), 1);
    // An unknown client: the same one check, against a dummy key.
    let mut unknown = assertion_claims(ISSUER);
    unknown["iss"] = "nobody.tasks".into();
    unknown["sub"] = "nobody.tasks".into();
    assert_eq!(checks(assertion(&forger, unknown)), 1);
    // A known client, a kid it does not have.
    let wrong_kid = assertion_with_header(
        &f,
        serde_json::json!({"alg": "ES256", "kid": "no-such-kid"}),
        assertion_claims(ISSUER),
    );
    assert_eq!(checks(wrong_kid), 1);
    // A secret-only client named in an assertion.
    let mut secret_client = assertion_claims(ISSUER);
    secret_client["iss"] = TASK_ID.into();
    secret_client["sub"] = TASK_ID.into();
    assert_eq!(checks(assertion(&forger, secret_client)), 1);
    // Every accepted alg has a dummy key (RSA, PSS, EdDSA, P-384 too).
    for (alg, name) in crate::http::client_auth::ASSERTION_ALGORITHMS {
        let header = URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": name}).to_string());
        let body = URL_SAFE_NO_PAD.encode(r#"{"sub":"nobody"}"#);
        assert_eq!(checks(format!("{header}.{body}.c2ln")), 1, "{alg:?}");
    }
}

#[tokio::test]
async fn replay_cache_capacity_is_a_metric_and_a_client_cannot_exhaust_it() {
    let f = fixture_with(Settings {
        replay: crate::http::client_auth::ReplayLimits {
            total: 10,
            per_client: 2,
        },
        ..settings()
    });
    for _ in 0..2 {
        let reply = assertion_token(&f, &assertion(&f, assertion_claims(ISSUER))).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let refused = assertion_token(&f, &assertion(&f, assertion_claims(ISSUER))).await;
    assert_oauth_error(&refused, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(
        refused.body["error_description"]
            .as_str()
            .expect("text")
            .contains("too many unexpired client assertions")
    );
    let text = metrics_text(&f).await;
    assert!(
        text.contains("sigil_issuer_remembered_assertions 2"),
        "{text}"
    );
    assert!(
        text.contains("sigil_issuer_assertions_refused_for_capacity_total 1"),
        "{text}"
    );
}

async fn metrics_text(f: &Fixture) -> String {
    let reply = send(
        crate::http::health_router(f.app.clone()),
        Request::get("/metrics")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    String::from_utf8(reply.raw).expect("utf8")
}

#[tokio::test]
async fn wrong_assertion_type_is_invalid_request() {
    let f = fixture();
    let reply = token(
        &f,
        "grant_type=client_credentials&client_assertion_type=saml&client_assertion=x",
        None,
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
}

// ------------------------------------------------------------ JWKS

#[tokio::test]
async fn jwks_lists_pending_active_and_retired_keys_with_kid_alg_use() {
    let f = fixture();
    let reply = send(
        crate::http::api_router(f.app.clone()),
        Request::get("/.well-known/jwks.json")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/jwk-set+json"
    );
    let keys = reply.body["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 4, "3 in the default ring + 1 in 'ed'");
    for key in keys {
        assert!(key["kid"].is_string());
        assert!(key["alg"].is_string());
        assert_eq!(key["use"], "sig");
        assert!(key.get("d").is_none(), "no private members");
    }
    let ring = f.store.ring(None).expect("ring");
    for published in &ring.published {
        assert!(keys.iter().any(|k| k["kid"] == published.kid.as_str()));
    }
    assert_eq!(
        ring.published.iter().map(|k| k.state).collect::<Vec<_>>(),
        vec![KeyState::Retired, KeyState::Active, KeyState::Pending]
    );
}

#[tokio::test]
async fn jwks_has_etag_max_age_within_prepublish_and_answers_304() {
    let f = fixture();
    let router = crate::http::api_router(f.app.clone());
    let first = send(
        router.clone(),
        Request::get("/.well-known/jwks.json")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    let etag = first.headers[header::ETAG]
        .to_str()
        .expect("ascii")
        .to_owned();
    let cache = first.headers[header::CACHE_CONTROL]
        .to_str()
        .expect("ascii")
        .to_owned();
    let max_age: u64 = cache
        .split("max-age=")
        .nth(1)
        .expect("max-age")
        .parse()
        .expect("number");
    assert!(max_age > 0 && max_age <= 3600 / 4, "{cache}");
    let again = send(
        router.clone(),
        Request::get("/.well-known/jwks.json")
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.raw.is_empty());
    // A key change makes a new ETag.
    f.store.set_ring(ring_with_keys(
        "ed",
        SigningAlgorithm::EdDSA,
        &[KeyState::Active],
    ));
    let changed = send(
        router,
        Request::get("/.well-known/jwks.json")
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_ne!(changed.headers[header::ETAG].to_str().expect("ascii"), etag);
}

#[test]
fn jwks_max_age_follows_the_shortest_pre_publish() {
    let store = Store::new("default");
    let mut ring = ring_with_keys("default", SigningAlgorithm::ES256, &[KeyState::Active]);
    ring.pre_publish = std::time::Duration::from_secs(40);
    store.set_ring(ring);
    assert_eq!(store.jwks().max_age, 10);
}

// ------------------------------------------------------------ discovery

#[tokio::test]
async fn both_discovery_documents_derive_from_the_issuer_url() {
    let f = fixture();
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let reply = send(
            crate::http::api_router(f.app.clone()),
            Request::get(path).body(Body::empty()).expect("request"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        let doc = &reply.body;
        assert_eq!(doc["issuer"], ISSUER);
        assert_eq!(doc["token_endpoint"], format!("{ISSUER}/oauth2/token"));
        assert_eq!(doc["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
        assert_eq!(
            doc["introspection_endpoint"],
            format!("{ISSUER}/oauth2/introspect")
        );
        assert_eq!(
            doc["grant_types_supported"],
            serde_json::json!(["client_credentials"])
        );
        assert_eq!(
            doc["token_endpoint_auth_methods_supported"],
            serde_json::json!([
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt"
            ])
        );
        // One list for what is accepted and what is advertised.
        let listed: Vec<&str> = doc["token_endpoint_auth_signing_alg_values_supported"]
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_str().expect("string"))
            .collect();
        assert_eq!(
            doc["introspection_endpoint_auth_signing_alg_values_supported"],
            doc["token_endpoint_auth_signing_alg_values_supported"]
        );
        for name in [
            "HS256", "HS384", "HS512", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256",
            "PS384", "PS512", "EdDSA",
        ] {
            let alg: jsonwebtoken::Algorithm = name.parse().expect("known");
            assert_eq!(
                listed.contains(&name),
                crate::http::client_auth::accepts_assertion_algorithm(alg),
                "{name}"
            );
        }
        assert!(listed.contains(&"PS384") && listed.contains(&"PS512"));
        // RFC 8414 §2 REQUIRED; authlib refuses an empty list.
        assert_eq!(doc["response_types_supported"], serde_json::json!(["none"]));
    }
}

#[tokio::test]
async fn issuer_url_with_a_path_moves_every_endpoint_under_it() {
    let f = fixture_with(Settings {
        issuer_url: sigil_core::IssuerUrl::parse("https://sigil.example/tenant")
            .expect("a valid URL"),
        ..settings()
    });
    let router = crate::http::api_router(f.app.clone());
    for path in [
        "/tenant/.well-known/openid-configuration",
        "/tenant/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/tenant",
        "/tenant/.well-known/jwks.json",
    ] {
        let reply = send(
            router.clone(),
            Request::get(path).body(Body::empty()).expect("request"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    let reply = send(
        router.clone(),
        Request::get("/tenant/.well-known/openid-configuration")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(
        reply.body["token_endpoint"],
        "https://sigil.example/tenant/oauth2/token"
    );
    let minted = send(
        router,
        form_request(
            "/tenant/oauth2/token",
            "grant_type=client_credentials",
            Some(&basic(TASK_ID, TASK_SECRET)),
            [10, 0, 0, 1],
        ),
    )
    .await;
    assert_eq!(minted.status, StatusCode::OK);
    let (_, claims) = jwt_parts(minted.body["access_token"].as_str().expect("token"));
    assert_eq!(claims["iss"], "https://sigil.example/tenant");
}

// ------------------------------------------------------------ introspection

async fn introspect(f: &Fixture, token: &str) -> Reply {
    send(
        crate::http::api_router(f.app.clone()),
        form_request(
            "/oauth2/introspect",
            &format!("token={token}"),
            Some(&basic(TASK_ID, TASK_SECRET)),
            [10, 0, 0, 2],
        ),
    )
    .await
}

#[tokio::test]
async fn a_disabled_client_cannot_introspect() {
    let f = fixture();
    let minted = task_token(&f, "").await;
    let access_token = minted.body["access_token"].as_str().expect("token");
    let reply = send(
        crate::http::api_router(f.app.clone()),
        form_request(
            "/oauth2/introspect",
            &format!("token={access_token}"),
            Some(&basic("disabled.tasks", "disabled-secret")),
            [10, 0, 0, 2],
        ),
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "unauthorized_client");
    assert!(reply.body.get("active").is_none());
}

#[tokio::test]
async fn introspection_reports_a_fresh_token_active_with_its_claims() {
    let f = fixture();
    let minted = task_token(&f, "&scope=event.view&audience=event").await;
    let reply = introspect(&f, minted.body["access_token"].as_str().expect("token")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(reply.body["active"], true);
    assert_eq!(reply.body["client_id"], TASK_ID);
    assert_eq!(reply.body["scope"], "event.view");
    assert_eq!(reply.body["aud"], "event");
    assert_eq!(reply.body["iss"], ISSUER);
    assert_eq!(reply.body["token_type"], "Bearer");
    assert!(reply.body["exp"].is_i64());
}

#[tokio::test]
async fn introspection_requires_client_authentication() {
    let f = fixture();
    let reply = send(
        crate::http::api_router(f.app.clone()),
        form_request("/oauth2/introspect", "token=abc", None, [10, 0, 0, 2]),
    )
    .await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let wrong = send(
        crate::http::api_router(f.app.clone()),
        form_request(
            "/oauth2/introspect",
            "token=abc",
            Some(&basic(TASK_ID, "nope")),
            [10, 0, 0, 2],
        ),
    )
    .await;
    assert_oauth_error(&wrong, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn introspection_without_token_is_invalid_request() {
    let f = fixture();
    let reply = send(
        crate::http::api_router(f.app.clone()),
        form_request(
            "/oauth2/introspect",
            "token_type_hint=access_token",
            Some(&basic(TASK_ID, TASK_SECRET)),
            [10, 0, 0, 2],
        ),
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn introspection_reports_garbage_as_inactive() {
    let f = fixture();
    let reply = introspect(&f, "not.a.jwt").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, serde_json::json!({"active": false}));
}

#[test]
fn introspection_reports_expired_tokens_inactive() {
    let f = fixture();
    let client = f.store.client(TASK_ID).expect("client");
    let active = f
        .store
        .ring(None)
        .expect("ring")
        .active
        .clone()
        .expect("active");
    let long_ago = crate::http::token::unix_now() - 7200;
    let claims = crate::http::token::access_token_claims(
        ISSUER,
        &client,
        &["event.view"],
        &["event"],
        &crate::audiences::TokenShape::unshaped(TokenTyp::AtJwt, client.ttl),
        long_ago,
        "jti",
    );
    let expired = crate::http::token::sign_jwt(&active, TokenTyp::AtJwt, &claims)
        .expect("sign")
        .into_string();
    let answer = crate::http::introspect::introspect_token(
        &f.store,
        ISSUER,
        &as_task(),
        &expired,
        crate::http::token::unix_now(),
    );
    assert_eq!(answer, serde_json::json!({"active": false}));
    // The same token is active at its issue time: only expiry differs.
    let then = crate::http::introspect::introspect_token(
        &f.store,
        ISSUER,
        &as_task(),
        &expired,
        long_ago + 1,
    );
    assert_eq!(then["active"], true);
}

#[tokio::test]
async fn introspection_reports_tokens_of_deleted_or_disabled_clients_inactive() {
    let f = fixture();
    let minted = task_token(&f, "").await;
    let access_token = minted.body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(introspect(&f, &access_token).await.body["active"], true);

    // Disable it: a second client introspects (the disabled one may still
    // authenticate, but its tokens are inactive).
    let mut disabled = oauth_client(
        "task-service",
        serde_json::json!({"scopes": ["event.view"], "audiences": ["event"], "disabled": true}),
    );
    disabled = standalone::with_verifier(&disabled, &secrets(&[(TASK_ID, TASK_SECRET)]));
    f.store.upsert_client(&disabled);
    let answer = crate::http::introspect::introspect_token(
        &f.store,
        ISSUER,
        &as_task(),
        &access_token,
        crate::http::token::unix_now(),
    );
    assert_eq!(answer["active"], false);

    f.store.remove_client(&crate::index::ObjectKey {
        namespace: "tasks".into(),
        name: "task-service".into(),
    });
    let answer = crate::http::introspect::introspect_token(
        &f.store,
        ISSUER,
        &as_task(),
        &access_token,
        crate::http::token::unix_now(),
    );
    assert_eq!(answer["active"], false);
}

#[tokio::test]
async fn introspection_reports_tokens_of_unpublished_keys_inactive() {
    let f = fixture();
    let minted = task_token(&f, "").await;
    let access_token = minted.body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    // The ring moves on: the signing key is no longer published.
    f.store.set_ring(ring_with_keys(
        "default",
        SigningAlgorithm::ES256,
        &[KeyState::Active],
    ));
    let reply = introspect(&f, &access_token).await;
    assert_eq!(reply.body, serde_json::json!({"active": false}));
}

#[test]
fn introspection_refuses_a_tampered_token() {
    let f = fixture();
    let client = f.store.client(TASK_ID).expect("client");
    let active = f
        .store
        .ring(None)
        .expect("ring")
        .active
        .clone()
        .expect("active");
    let now = crate::http::token::unix_now();
    let claims = crate::http::token::access_token_claims(
        ISSUER,
        &client,
        &["event.view"],
        &["event"],
        &crate::audiences::TokenShape::unshaped(TokenTyp::AtJwt, client.ttl),
        now,
        "jti",
    );
    let good = crate::http::token::sign_jwt(&active, TokenTyp::AtJwt, &claims)
        .expect("sign")
        .into_string();
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(claims.replace("event.view", "event.delete"));
    let tampered = parts.join(".");
    assert_eq!(
        crate::http::introspect::introspect_token(&f.store, ISSUER, &as_task(), &tampered, now)["active"],
        false
    );
}

// ------------------------------------------------------------ health + metrics

#[tokio::test]
async fn readyz_needs_synced_caches_and_an_active_key() {
    let store = Arc::new(Store::new("default"));
    let app =
        Arc::new(App::new(store.clone(), Arc::new(Metrics::new()), &settings()).expect("app"));
    let get = |path: &'static str| {
        let router = crate::http::health_router(app.clone());
        async move {
            send(
                router,
                Request::get(path).body(Body::empty()).expect("request"),
            )
            .await
        }
    };
    // /readyz, and sigil_issuer_ready (what the IssuerNotReady alert reads)
    // saying the same thing.
    let readiness = || async {
        let status = get("/readyz").await.status;
        let metrics = String::from_utf8(get("/metrics").await.raw).expect("utf8");
        let gauge = metrics
            .lines()
            .find_map(|l| l.strip_prefix("sigil_issuer_ready "))
            .map(str::to_owned);
        (status, gauge)
    };
    let not_ready = (StatusCode::SERVICE_UNAVAILABLE, Some("0".to_owned()));
    assert_eq!(get("/healthz").await.status, StatusCode::OK);
    assert_eq!(readiness().await, not_ready);
    store.mark_synced();
    assert_eq!(readiness().await, not_ready, "no key yet");
    store.set_ring(ring_with_keys(
        "default",
        SigningAlgorithm::ES256,
        &[KeyState::Pending],
    ));
    assert_eq!(readiness().await, not_ready, "pending only");
    store.set_ring(ring_with_keys(
        "default",
        SigningAlgorithm::ES256,
        &[KeyState::Active],
    ));
    assert_eq!(readiness().await, (StatusCode::OK, Some("1".to_owned())));
    app.start_draining();
    assert_eq!(readiness().await, not_ready, "stopping");
}

#[tokio::test]
async fn clients_over_the_size_limits_are_not_loaded_and_are_counted() {
    let f = fixture();
    let big_claims = oauth_client(
        "big-claims",
        serde_json::json!({
            "scopes": ["a"], "audiences": ["x"],
            "additionalClaims": {"blob": "x".repeat(9 * 1024)},
        }),
    );
    let mut key = f.assertion_key.public_jwk(&f.assertion_kid);
    key.as_object_mut().expect("object").remove("use");
    let many_keys = oauth_client(
        "many-keys",
        serde_json::json!({
            "scopes": ["a"], "audiences": ["x"], "authMethods": ["private_key_jwt"],
            "jwks": {"keys": vec![key.clone(); 11]},
        }),
    );
    let mut padded = key.clone();
    padded["x-padding"] = "p".repeat(70 * 1024).into();
    let big_jwks = oauth_client(
        "big-jwks",
        serde_json::json!({
            "scopes": ["a"], "audiences": ["x"], "authMethods": ["private_key_jwt"],
            "jwks": {"keys": [padded]},
        }),
    );
    let secrets = secrets(&[("big-claims.tasks", "big-claims-secret")]);
    standalone::load_clients(
        &f.store,
        &[big_claims.clone(), many_keys, big_jwks],
        &secrets,
    );
    for id in ["big-claims.tasks", "many-keys.tasks", "big-jwks.tasks"] {
        assert!(f.store.client(id).is_none(), "{id} must not be loaded");
    }
    let reply = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic("big-claims.tasks", "big-claims-secret")),
    )
    .await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let text = metrics_text(&f).await;
    assert!(
        text.contains("sigil_issuer_clients_over_limits 3"),
        "{text}"
    );
    // Shrunk below the limit, it loads, and the count drops.
    let small = oauth_client(
        "big-claims",
        serde_json::json!({"scopes": ["a"], "audiences": ["x"], "additionalClaims": {"blob": "small"}}),
    );
    f.store
        .upsert_client(&standalone::with_verifier(&small, &secrets));
    assert!(f.store.client("big-claims.tasks").is_some());
    assert_eq!(f.store.clients_over_limits(), 2);
    // Within the limits an unknown JWK member is fine (and not kept).
    let mut extra = key.clone();
    extra["x-note"] = "n".repeat(1024).into();
    let ok = oauth_client(
        "extra-member",
        serde_json::json!({
            "scopes": ["a"], "audiences": ["x"], "authMethods": ["private_key_jwt"],
            "jwks": {"keys": [extra]},
        }),
    );
    f.store
        .upsert_client(&standalone::with_verifier(&ok, &secrets));
    assert_eq!(
        f.store
            .client("extra-member.tasks")
            .expect("loaded")
            .jwks
            .len(),
        1
    );
}

#[tokio::test]
async fn metrics_count_token_results_latency_clients_and_keys() {
    let f = fixture();
    task_token(&f, "").await;
    task_token(&f, "&scope=nope").await;
    token(
        &f,
        "grant_type=client_credentials",
        Some(&basic(TASK_ID, "wrong")),
    )
    .await;
    let reply = send(
        crate::http::health_router(f.app.clone()),
        Request::get("/metrics")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    let text = String::from_utf8(reply.raw).expect("utf8");
    assert!(
        text.contains(r#"sigil_issuer_token_requests_total{result="success"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"sigil_issuer_token_requests_total{result="invalid_scope"} 1"#));
    assert!(text.contains(r#"sigil_issuer_token_requests_total{result="invalid_client"} 1"#));
    assert!(text.contains("sigil_issuer_token_request_duration_seconds_count 3"));
    assert!(text.contains("sigil_issuer_clients 6"));
    assert!(text.contains("sigil_issuer_signing_keys 4"));
    // The wrong secret came from 10.0.0.1: one source tracked.
    assert!(
        text.contains("sigil_issuer_failed_auth_tracked_sources 1"),
        "{text}"
    );
    assert!(text.contains("sigil_issuer_remembered_assertions 0"));
    assert!(text.contains("sigil_issuer_assertions_refused_for_capacity_total 0"));
    assert!(text.contains("sigil_issuer_clients_over_limits 0"));
}

// ------------------------------------------------------------ logs

/// A writer that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Set in the child process that runs the log-capture test alone.
const LOG_CAPTURE_CHILD: &str = "SIGIL_LOG_CAPTURE_CHILD";

#[test]
fn logs_never_contain_secrets_tokens_or_assertions() {
    // Tracing's per-callsite interest is process-wide: tests running in
    // parallel threads can make a scoped subscriber miss lines. So the
    // capture runs in a child process of this test binary, alone, with a
    // global subscriber.
    if std::env::var_os(LOG_CAPTURE_CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(capture_logs_of_every_path());
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "api_tests::logs_never_contain_secrets_tokens_or_assertions",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(LOG_CAPTURE_CHILD, "1")
        .output()
        .expect("running the log-capture child");
    assert!(
        output.status.success(),
        "the log-capture child failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the child ran no test"
    );
}

async fn capture_logs_of_every_path() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    // Every path's line, whatever the failure log budget (tested below).
    let f = fixture_with(Settings {
        failed_auth_log_lines_per_second: NonZeroU32::MAX,
        ..settings()
    });
    let ok = task_token(&f, "").await;
    let access_token = ok.body["access_token"].as_str().expect("token").to_owned();
    let wrong_secret = "wrong-secret-that-must-not-be-logged";
    let failed = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic(TASK_ID, wrong_secret)),
    )
    .await;
    assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    let jwt = assertion(&f, assertion_claims("https://elsewhere.example"));
    assertion_token(&f, &jwt).await;
    introspect(&f, &access_token).await;
    // A 60,000-character client id is logged as its first 64 characters.
    let long_id = format!("{}{}", "L".repeat(64), "Z".repeat(59_936));
    token(
        &f,
        &format!("grant_type=client_credentials&client_id={long_id}&client_secret={wrong_secret}"),
        None,
    )
    .await;
    // An unknown assertion client, with a long sub.
    let mut claims = assertion_claims(ISSUER);
    claims["sub"] = format!("{}{}", "S".repeat(64), "T".repeat(2_000)).into();
    let unknown_jwt = assertion(&f, claims);
    assertion_token(&f, &unknown_jwt).await;
    // The first rate-limited failure (429) of the source is logged too.
    for _ in 0..70 {
        token(
            &f,
            "grant_type=client_credentials",
            Some(&basic(TASK_ID, wrong_secret)),
        )
        .await;
    }
    // A client over the limits: logged by client id, never by content.
    let claim_secret = "claim-content-that-must-not-be-logged";
    standalone::load_clients(
        &f.store,
        &[oauth_client(
            "huge",
            serde_json::json!({"additionalClaims": {"k": claim_secret.repeat(400)}}),
        )],
        &secrets(&[("huge.tasks", "huge-secret")]),
    );
    // A replay-cache refusal.
    let tight = fixture_with(Settings {
        replay: crate::http::client_auth::ReplayLimits {
            total: 2,
            per_client: 1,
        },
        ..settings()
    });
    let first = assertion(&tight, assertion_claims(ISSUER));
    let second = assertion(&tight, assertion_claims(ISSUER));
    assertion_token(&tight, &first).await;
    assertion_token(&tight, &second).await;

    // The failure log budget: of 20 failures from one source with a budget
    // of 5, only those within it are logged, at most 3 a second.
    let throttled = fixture_with(Settings {
        failed_auth_per_minute: NonZeroU32::new(5).expect("nonzero"),
        failed_auth_log_lines_per_second: NonZeroU32::new(3).expect("nonzero"),
        ..settings()
    });
    let started = std::time::Instant::now();
    for _ in 0..20 {
        token_from(&throttled, &basic("throttle-probe", "x"), [10, 7, 7, 7]).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let suppressed = |reason| {
        throttled
            .app
            .metrics
            .failed_auth_logs_suppressed
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .get()
    };
    // The 6th failure is the first over budget; the 14 after it are not
    // logged whatever the line budget.
    assert_eq!(suppressed("source_over_budget"), 14);
    throttled
        .app
        .log_unlogged_failures(std::time::Duration::from_secs(30));

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    let probe_lines = logs
        .lines()
        .filter(|l| l.contains("throttle-probe"))
        .count() as u64;
    assert!(
        probe_lines >= 3 && probe_lines as f64 <= 3.0 + (3.0 * elapsed).ceil(),
        "{probe_lines} lines for 20 failures in {elapsed} s"
    );
    assert_eq!(probe_lines + suppressed("lines_per_second"), 6);
    let summary = logs
        .lines()
        .find(|l| l.contains("failed client authentications not logged"))
        .expect("a summary line");
    assert!(
        summary.contains(&format!("unlogged={}", 20 - probe_lines)),
        "{summary}"
    );
    assert!(
        logs.contains("client authentication failed"),
        "the failure is logged: {logs}"
    );
    for needle in [
        TASK_SECRET,
        wrong_secret,
        &access_token,
        &jwt,
        &unknown_jwt,
        &first,
        &second,
        "huge-secret",
        claim_secret,
    ] {
        assert!(!logs.contains(needle), "a credential leaked into the logs");
    }
    assert!(logs.contains(&format!("{}…", "L".repeat(64))), "{logs}");
    assert!(!logs.contains("LZ"), "a long client id was logged whole");
    assert!(logs.contains(&format!("{}…", "S".repeat(64))), "{logs}");
    assert!(
        !logs.contains("ST"),
        "a long assertion sub was logged whole"
    );
    assert!(logs.contains("rate_limited=true"));
    assert!(logs.contains("huge.tasks") && logs.contains("over the issuer's limits"));
    assert!(logs.contains("too many unexpired assertions remembered"));
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2_000, "a log line of {longest} bytes");
    let signature = access_token.rsplit('.').next().expect("sig");
    assert!(!logs.contains(signature));
}

#[allow(dead_code)]
fn _assert_entry_is_send_sync(entry: ClientEntry) -> impl Send + Sync {
    entry
}

fn oauth_resource(ns: &str, audience: &str, token: serde_json::Value) -> sigil_crds::OAuthResource {
    let mut r = sigil_crds::OAuthResource::new(
        &format!("{audience}-api"),
        serde_json::from_value(serde_json::json!({
            "audience": audience,
            "scopes": [{"name": format!("{audience}.view")}, {"name": format!("{audience}.create")}],
            "token": token,
        }))
        .expect("resource spec"),
    );
    r.metadata.namespace = Some(ns.into());
    r
}

/// Introspects `token` as `id` (its secret in `secret`).
async fn introspect_as(f: &Fixture, id: &str, secret: &str, token: &str) -> Reply {
    send(
        crate::http::api_router(f.app.clone()),
        form_request(
            "/oauth2/introspect",
            &format!("token={token}"),
            Some(&basic(id, secret)),
            [10, 0, 0, 3],
        ),
    )
    .await
}

#[tokio::test]
async fn only_the_tokens_client_and_its_audiences_owner_may_introspect_it() {
    let f = fixture();
    let mut calendar = oauth_client(
        "calendar-api",
        serde_json::json!({"scopes": ["a"], "audiences": ["x"]}),
    );
    calendar.metadata.namespace = Some("calendar".into());
    let calendar = standalone::with_verifier(
        &calendar,
        &secrets(&[("calendar-api.calendar", "cal-secret")]),
    );
    f.store.upsert_client(&calendar);
    let minted = task_token(&f, "&audience=event").await;
    let token = minted.body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();

    // Its own client may; another client learns nothing, not even that it
    // is a token.
    assert_eq!(introspect(&f, &token).await.body["active"], true);
    let stranger = introspect_as(&f, "calendar-api.calendar", "cal-secret", &token).await;
    assert_eq!(stranger.status, StatusCode::OK);
    assert_eq!(stranger.body, serde_json::json!({"active": false}));

    // Once the calendar namespace holds `event`, its clients may.
    f.store
        .replace_resources(&[oauth_resource("calendar", "event", serde_json::json!({}))]);
    let owner = introspect_as(&f, "calendar-api.calendar", "cal-secret", &token).await;
    assert_eq!(owner.body["active"], true);
    assert_eq!(owner.body["client_id"], TASK_ID);
    // A resource of another namespace does not make it an owner.
    f.store
        .replace_resources(&[oauth_resource("elsewhere", "event", serde_json::json!({}))]);
    let not_owner = introspect_as(&f, "calendar-api.calendar", "cal-secret", &token).await;
    assert_eq!(not_owner.body["active"], false);
}

#[tokio::test]
async fn each_audiences_resource_sets_its_tokens_typ_lifetime_and_scope_claims() {
    let f = fixture();
    f.store.replace_resources(&[
        oauth_resource(
            "calendar",
            "event",
            serde_json::json!({"type": "JWT", "maxLifetime": "5m"}),
        ),
        oauth_resource("files", "file", serde_json::json!({"scopeClaims": ["scp"]})),
    ]);
    let event = task_token(&f, "&audience=event&scope=event.view").await;
    assert_eq!(event.status, StatusCode::OK, "{}", event.body);
    assert_eq!(event.body["expires_in"], 300);
    let (header, claims) = jwt_parts(event.body["access_token"].as_str().expect("token"));
    assert_eq!(header["typ"], "JWT");
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        300
    );
    assert_eq!(claims["scope"], "event.view");

    let file = task_token(&f, "&audience=file&scope=file.view").await;
    assert_eq!(file.body["expires_in"], 3600);
    let (header, claims) = jwt_parts(file.body["access_token"].as_str().expect("token"));
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(claims["scp"], serde_json::json!(["file.view"]));
    assert!(claims.get("scope").is_none(), "{claims}");
    // The response still names the scopes (RFC 6749 §5.1).
    assert_eq!(file.body["scope"], "file.view");

    // One token cannot be both JWT and at+jwt.
    let both = task_token(&f, "").await;
    assert_oauth_error(&both, StatusCode::BAD_REQUEST, "invalid_target");
    assert!(
        both.body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("different token types")),
        "{}",
        both.body
    );
}

#[tokio::test]
async fn discovery_lists_the_scopes_the_resources_declare() {
    let f = fixture();
    let get = || async {
        send(
            crate::http::api_router(f.app.clone()),
            Request::get("/.well-known/openid-configuration")
                .body(Body::empty())
                .expect("request"),
        )
        .await
    };
    assert!(get().await.body.get("scopes_supported").is_none());
    f.store
        .replace_resources(&[oauth_resource("calendar", "event", serde_json::json!({}))]);
    assert_eq!(
        get().await.body["scopes_supported"],
        serde_json::json!(["event.create", "event.view"])
    );
}

#[tokio::test]
async fn a_client_granted_no_audience_gets_no_token() {
    let f = fixture();
    let none = oauth_client("no-audience", serde_json::json!({"scopes": ["a"]}));
    f.store.upsert_client(&standalone::with_verifier(
        &none,
        &secrets(&[("no-audience.tasks", "none-secret")]),
    ));
    let reply = token(
        &f,
        "grant_type=client_credentials",
        Some(&basic("no-audience.tasks", "none-secret")),
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_target");
}
