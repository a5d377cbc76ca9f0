//! One standalone issuer, two APIs that want different token formats
//! (DESIGN.md §6, issue 13): the Spring API's OAuthResource asks for
//! `typ: JWT`, which Spring Security's `NimbusJwtDecoder` with its default
//! validators accepts, while the Node API's keeps the default `at+jwt`, which
//! oauth4webapi's `validateJwtAccessToken` requires. Each library also
//! rejects the other API's token, so a typ that leaked across audiences (or a
//! library that stopped checking it) fails here.

mod issuer_support;

use issuer_support::*;

const MANIFESTS: &str = "\
apiVersion: sigil.dev/v1alpha1
kind: SigningKey
metadata: {name: default, namespace: sigil-system}
spec: {algorithm: ES256}
---
apiVersion: sigil.dev/v1alpha1
kind: OAuthResource
metadata: {name: spring-api, namespace: spring}
spec:
  audience: spring-api
  scopes: [{name: spring.read}]
  token: {type: JWT}
---
apiVersion: sigil.dev/v1alpha1
kind: OAuthResource
metadata: {name: oauth4-api, namespace: node}
spec:
  audience: oauth4-api
  scopes: [{name: oauth4.read}]
---
apiVersion: sigil.dev/v1alpha1
kind: OAuthClient
metadata: {name: caller, namespace: apps}
spec:
  scopes: [spring.read, oauth4.read]
  audiences: [spring-api, oauth4-api]
";

const CLIENT_ID: &str = "caller.apps";

fn header(token: &str) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').next().expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url header");
    serde_json::from_slice(&bytes).expect("JSON header")
}

#[tokio::test]
async fn spring_accepts_the_jwt_typ_audience_and_oauth4webapi_the_at_jwt_one() {
    // Build/install the verifiers before the issuer starts (the first Maven
    // build resolves from Maven Central).
    java_verifier().await;
    node_ready().await;

    let standalone = Standalone::start("sigil-interop-typ", MANIFESTS).await;
    let secret = standalone.secret(CLIENT_ID);
    let secret = secret.as_str();
    let issuer = &standalone.issuer;
    let (url, iss, jwks) = (issuer.token_url(), &issuer.base_url, issuer.jwks_url());

    let token_for = |audience: &'static str| {
        let (url, secret) = (url.clone(), secret.to_owned());
        async move {
            let form = format!("grant_type=client_credentials&audience={audience}");
            access_token_basic(&url, CLIENT_ID, &secret, &form, audience).await
        }
    };
    let spring_token = token_for("spring-api").await;
    let oauth4_token = token_for("oauth4-api").await;
    assert_eq!(header(&spring_token)["typ"], "JWT");
    assert_eq!(header(&spring_token)["alg"], "ES256");
    assert_eq!(header(&oauth4_token)["typ"], "at+jwt");

    // The two audiences want different types: one token cannot carry both.
    let both = token_basic(&url, CLIENT_ID, secret, "grant_type=client_credentials").await;
    assert_eq!(both.status, 400, "{}", both.body);
    assert_eq!(both.json()["error"], "invalid_target", "{}", both.body);

    // Spring Security: NimbusJwtDecoder.withJwkSetUri(jwks) told the key's
    // algorithm, the default validators for the issuer, plus the audience.
    let spring_run = |audience, token| SpringRun {
        jwks_url: &jwks,
        issuer: iss,
        audience,
        jws_algorithm: "ES256",
        token,
    };
    let spring = run_spring(&spring_run("spring-api", &spring_token)).await;
    assert_eq!(
        spring["ok"], true,
        "Spring rejected the JWT-typ token: {spring}"
    );
    assert_eq!(spring["header"]["typ"], "JWT", "{spring}");
    assert_eq!(spring["claims"]["aud"], serde_json::json!(["spring-api"]));
    assert_eq!(spring["claims"]["sub"], CLIENT_ID);
    assert_eq!(spring["claims"]["iss"], iss.as_str());

    // oauth4webapi: discovery, then validateJwtAccessToken.
    let oauth4 = run_oauth4webapi(iss, "oauth4-api", &oauth4_token).await;
    assert_eq!(
        oauth4["ok"], true,
        "oauth4webapi rejected the at+jwt token: {oauth4}"
    );
    assert_eq!(oauth4["claims"]["aud"], "oauth4-api", "{oauth4}");
    assert_eq!(oauth4["claims"]["client_id"], CLIENT_ID);

    // Each library refuses the other format, for its typ alone: the
    // audience asked is the token's own.
    let spring = run_spring(&spring_run("oauth4-api", &oauth4_token)).await;
    assert_eq!(
        spring["ok"], false,
        "Spring accepted an at+jwt token: {spring}"
    );
    assert!(
        spring["error"]
            .as_str()
            .is_some_and(|e| e.contains("at+jwt")),
        "Spring should name the typ it refused: {spring}"
    );
    let oauth4 = run_oauth4webapi(iss, "spring-api", &spring_token).await;
    assert_eq!(
        oauth4["ok"], false,
        "oauth4webapi accepted a JWT-typ token: {oauth4}"
    );
    assert!(
        oauth4["error"].as_str().is_some_and(|e| e.contains("typ")),
        "oauth4webapi should name the typ check: {oauth4}"
    );
}
