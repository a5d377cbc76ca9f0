use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sigil_core::keys::{ParsedKey, generate_pkcs8_der};
use sigil_crds::{OAuthClient, SigningAlgorithm};

use super::*;

const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const SIGIL: &str = "https://sigil.example";
const NOW: i64 = 1_800_000_000;

fn claims(value: serde_json::Value) -> ServiceAccountClaims {
    serde_json::from_value(value).expect("claims")
}

fn good() -> serde_json::Value {
    json!({
        "iss": SA_ISSUER,
        "sub": "system:serviceaccount:tasks:task-service",
        "aud": [SIGIL],
        "exp": NOW + 600,
        "iat": NOW - 5,
        "nbf": NOW - 5,
        "kubernetes.io": {
            "namespace": "tasks",
            "serviceaccount": {"name": "task-service", "uid": "sa-uid"},
            "pod": {"name": "task-7d9", "uid": "pod-uid"},
        },
    })
}

fn with(path: &[&str], value: serde_json::Value) -> ServiceAccountClaims {
    let mut claims = good();
    let mut at = &mut claims;
    for part in &path[..path.len() - 1] {
        at = &mut at[*part];
    }
    let last = path[path.len() - 1];
    if value.is_null() {
        at.as_object_mut().expect("object").remove(last);
    } else {
        at[last] = value;
    }
    self::claims(claims)
}

#[test]
fn a_projected_token_for_sigil_names_its_service_account_and_pod() {
    let identity = check_claims(&claims(good()), SA_ISSUER, SIGIL, NOW).expect("valid");
    assert_eq!(
        identity,
        ServiceAccountIdentity {
            namespace: "tasks".into(),
            name: "task-service".into(),
            uid: "sa-uid".into(),
            pod: Some(("task-7d9".into(), "pod-uid".into())),
            exp: NOW + 600,
        }
    );
    assert_eq!(
        identity.username(),
        "system:serviceaccount:tasks:task-service"
    );
    // `kubectl create token` binds no pod; a plain string aud is fine too.
    let mut unbound = good();
    unbound["kubernetes.io"]
        .as_object_mut()
        .unwrap()
        .remove("pod");
    unbound["aud"] = json!(SIGIL);
    assert_eq!(
        check_claims(&claims(unbound), SA_ISSUER, SIGIL, NOW)
            .unwrap()
            .pod,
        None
    );
}

#[test]
fn every_claim_check_refuses() {
    let cases: Vec<(&str, ServiceAccountClaims, i64)> = vec![
        ("other issuer", with(&["iss"], json!("https://other")), NOW),
        ("no iss", with(&["iss"], json!(null)), NOW),
        (
            "other audience",
            with(&["aud"], json!(["https://kubernetes.default.svc"])),
            NOW,
        ),
        (
            "token endpoint as aud",
            with(&["aud"], json!([format!("{SIGIL}/oauth2/token")])),
            NOW,
        ),
        (
            "a second audience",
            with(&["aud"], json!([SIGIL, "vault"])),
            NOW,
        ),
        ("no aud", with(&["aud"], json!(null)), NOW),
        ("no exp", with(&["exp"], json!(null)), NOW),
        ("expired", claims(good()), NOW + 600 + LEEWAY_SECS),
        (
            "too long",
            with(&["exp"], json!(NOW + MAX_REMAINING_LIFETIME_SECS + 1)),
            NOW,
        ),
        (
            "nbf ahead",
            with(&["nbf"], json!(NOW + LEEWAY_SECS + 1)),
            NOW,
        ),
        (
            "iat ahead",
            with(&["iat"], json!(NOW + LEEWAY_SECS + 1)),
            NOW,
        ),
        (
            "no kubernetes.io",
            with(&["kubernetes.io"], json!(null)),
            NOW,
        ),
        (
            "no namespace",
            with(&["kubernetes.io", "namespace"], json!(null)),
            NOW,
        ),
        (
            "empty namespace",
            with(&["kubernetes.io", "namespace"], json!("")),
            NOW,
        ),
        (
            "no serviceaccount",
            with(&["kubernetes.io", "serviceaccount"], json!(null)),
            NOW,
        ),
        (
            "no sa uid",
            with(&["kubernetes.io", "serviceaccount", "uid"], json!(null)),
            NOW,
        ),
        (
            "no sa name",
            with(&["kubernetes.io", "serviceaccount", "name"], json!(null)),
            NOW,
        ),
        (
            "sub of another account",
            with(&["sub"], json!("system:serviceaccount:tasks:other")),
            NOW,
        ),
        (
            "sub of another namespace",
            with(&["kubernetes.io", "namespace"], json!("other")),
            NOW,
        ),
        (
            "pod without uid",
            with(&["kubernetes.io", "pod", "uid"], json!(null)),
            NOW,
        ),
        (
            "pod without name",
            with(&["kubernetes.io", "pod", "name"], json!("")),
            NOW,
        ),
    ];
    for (what, claims, now) in cases {
        assert!(
            check_claims(&claims, SA_ISSUER, SIGIL, now).is_err(),
            "{what} passed"
        );
    }
    // Within the leeway: still good.
    assert!(
        check_claims(
            &claims(good()),
            SA_ISSUER,
            SIGIL,
            NOW + 600 + LEEWAY_SECS - 1
        )
        .is_ok()
    );
    assert!(
        check_claims(
            &with(&["nbf"], json!(NOW + LEEWAY_SECS)),
            SA_ISSUER,
            SIGIL,
            NOW
        )
        .is_ok()
    );
}

fn entry(name: &str, namespace: &str, spec: serde_json::Value) -> OAuthClient {
    let mut client = OAuthClient::new(name, serde_json::from_value(spec).unwrap());
    client.metadata.namespace = Some(namespace.into());
    client.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ));
    client.status = Some(sigil_crds::OAuthClientStatus {
        client_id: Some(client.client_id()),
        grant: Some(sigil_crds::grant::as_requested(&client.spec)),
        ..Default::default()
    });
    client
}

fn federated(accounts: &[&str]) -> serde_json::Value {
    json!({"authMethods": ["federated_jwt"], "serviceAccounts": accounts, "audiences": ["event"]})
}

#[test]
fn the_client_id_is_needed_only_when_several_clients_list_the_account() {
    let store = Store::new("default");
    store.upsert_client(&entry(
        "one",
        "tasks",
        federated(&["task-service", "batch"]),
    ));
    store.upsert_client(&entry("two", "tasks", federated(&["batch"])));
    // Listed, but without the method: the CRD refuses it; the index ignores it.
    store.upsert_client(&entry(
        "secret",
        "tasks",
        json!({"serviceAccounts": ["task-service"]}),
    ));
    store.upsert_client(&entry("elsewhere", "other", federated(&["task-service"])));

    let pick = |ns: &str, sa: &str, id: Option<&str>| {
        select_client(store.clients_for_service_account(ns, sa), id).map(|c| c.client_id.clone())
    };
    assert_eq!(
        pick("tasks", "task-service", None).as_deref(),
        Some("one.tasks")
    );
    assert_eq!(
        pick("tasks", "task-service", Some("one.tasks")).as_deref(),
        Some("one.tasks")
    );
    assert_eq!(pick("tasks", "task-service", Some("two.tasks")), None);
    assert_eq!(pick("tasks", "task-service", Some("elsewhere.other")), None);
    // Two clients list `batch`: the caller must say which.
    assert_eq!(pick("tasks", "batch", None), None);
    assert_eq!(
        pick("tasks", "batch", Some("two.tasks")).as_deref(),
        Some("two.tasks")
    );
    assert_eq!(pick("tasks", "nobody", None), None);
    assert_eq!(
        pick("other", "task-service", None).as_deref(),
        Some("elsewhere.other")
    );

    // Removing an account from the spec, or the client, updates the index.
    store.upsert_client(&entry("one", "tasks", federated(&["task-service"])));
    assert_eq!(pick("tasks", "batch", None).as_deref(), Some("two.tasks"));
    store.remove_client(&crate::index::ObjectKey {
        namespace: "tasks".into(),
        name: "one".into(),
    });
    assert_eq!(pick("tasks", "task-service", None), None);
}

#[test]
fn the_review_cache_is_bounded_and_forgets_in_time() {
    let now = Instant::now();
    let mut cache = ReviewCache::new(3);
    for i in 0..5u8 {
        cache.insert([i; 32], true, now + Duration::from_secs(10), now);
    }
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.get(&[0; 32], now), None, "the oldest left");
    assert_eq!(cache.get(&[4; 32], now), Some(true));
    assert_eq!(cache.get(&[4; 32], now + Duration::from_secs(10)), None);
    assert!(cache.is_empty());
}

// ---------------------------------------------------------- signatures

struct ApiServer {
    key: ParsedKey,
    kid: String,
}

impl ApiServer {
    fn new(kid: &str) -> ApiServer {
        let der = generate_pkcs8_der(SigningAlgorithm::ES256, 2048).unwrap();
        ApiServer {
            key: ParsedKey::from_pkcs8_der(SigningAlgorithm::ES256, &der).unwrap(),
            kid: kid.into(),
        }
    }

    fn token(&self, claims: &serde_json::Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self.key.sign(token.as_bytes()).unwrap();
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        token
    }
}

/// Publishes the keys in `published`, counting fetches.
struct FakeSource {
    published: Arc<Mutex<Vec<serde_json::Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl KeySource for FakeSource {
    fn fetch(&self) -> FetchFuture {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let keys = self.published.lock().unwrap().clone();
        Box::pin(async move {
            Ok(Published {
                issuer: SA_ISSUER.into(),
                jwks: json!({ "keys": keys }),
            })
        })
    }
}

fn now_claims() -> (serde_json::Value, i64) {
    let now = crate::http::token::unix_now();
    let mut claims = good();
    claims["exp"] = json!(now + 600);
    claims["iat"] = json!(now);
    claims["nbf"] = json!(now);
    (claims, now)
}

#[tokio::test]
async fn tokens_verify_against_published_keys_and_garbage_kids_fetch_rarely() {
    let first = ApiServer::new("k1");
    let published = Arc::new(Mutex::new(vec![first.key.public_jwk(&first.kid)]));
    let fetches = Arc::new(AtomicUsize::new(0));
    let federation = Federation::new(
        Box::new(FakeSource {
            published: published.clone(),
            fetches: fetches.clone(),
        }),
        None,
        FederationMetrics::default(),
    );
    let store = Store::new("default");
    store.upsert_client(&entry("one", "tasks", federated(&["task-service"])));
    let (claims, now) = now_claims();

    let token = first.token(&claims);
    assert!(federation.claims_our_issuer(&token).await);
    let client = federation
        .authenticate(&store, &token, None, SIGIL, now)
        .await
        .expect("a token signed by a published key");
    assert_eq!(client.client_id, "one.tasks");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // A key the API server does not publish, under a known or an unknown kid.
    let forger = ApiServer::new("k1");
    assert!(
        federation
            .authenticate(&store, &forger.token(&claims), None, SIGIL, now)
            .await
            .is_err()
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    *federation.last_fetch.lock().await = Some(Instant::now() - MIN_REFETCH_INTERVAL);
    let garbage = ApiServer::new("garbage");
    for _ in 0..20 {
        assert!(
            federation
                .authenticate(&store, &garbage.token(&claims), None, SIGIL, now)
                .await
                .is_err()
        );
    }
    // One refetch for the unknown kid, then none within the interval.
    assert_eq!(fetches.load(Ordering::SeqCst), 2);

    // Tampered claims fail the signature.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut altered = claims.clone();
    altered["kubernetes.io"]["serviceaccount"]["name"] = json!("admin");
    parts[1] = URL_SAFE_NO_PAD.encode(altered.to_string());
    assert!(
        federation
            .authenticate(&store, &parts.join("."), None, SIGIL, now)
            .await
            .is_err()
    );
    // alg none is not on the list.
    parts[0] = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "k1"}).to_string());
    assert!(
        federation
            .authenticate(&store, &parts.join("."), None, SIGIL, now)
            .await
            .is_err()
    );
    // Our issuer is only claimed by tokens with the cluster's iss.
    let mut foreign = claims.clone();
    foreign["iss"] = json!("task-service.tasks");
    assert!(!federation.claims_our_issuer(&first.token(&foreign)).await);
}

#[tokio::test]
async fn a_rotated_api_server_key_is_fetched_on_its_first_token() {
    let old = ApiServer::new("old");
    let published = Arc::new(Mutex::new(vec![old.key.public_jwk(&old.kid)]));
    let fetches = Arc::new(AtomicUsize::new(0));
    let federation = Federation::new(
        Box::new(FakeSource {
            published: published.clone(),
            fetches: fetches.clone(),
        }),
        None,
        FederationMetrics::default(),
    );
    let store = Store::new("default");
    store.upsert_client(&entry("one", "tasks", federated(&["task-service"])));
    let (claims, now) = now_claims();
    assert!(
        federation
            .authenticate(&store, &old.token(&claims), None, SIGIL, now)
            .await
            .is_ok()
    );
    let new = ApiServer::new("new");
    published.lock().unwrap().push(new.key.public_jwk(&new.kid));
    // Within the minimum interval a new kid waits; past it, one fetch finds it.
    *federation.last_fetch.lock().await = Some(Instant::now() - MIN_REFETCH_INTERVAL);
    assert!(
        federation
            .authenticate(&store, &new.token(&claims), None, SIGIL, now)
            .await
            .is_ok()
    );
    assert!(
        federation
            .authenticate(&store, &old.token(&claims), None, SIGIL, now)
            .await
            .is_ok()
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

struct FakeReviewer(Arc<AtomicUsize>, bool);

impl Reviewer for FakeReviewer {
    fn review(
        &self,
        _token: String,
        _audience: String,
        _identity: ServiceAccountIdentity,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let ok = self.1;
        Box::pin(async move { Ok(ok) })
    }
}

#[tokio::test]
async fn token_review_refuses_what_the_api_server_no_longer_accepts_and_is_cached() {
    let server = ApiServer::new("k1");
    let store = Store::new("default");
    store.upsert_client(&entry("one", "tasks", federated(&["task-service"])));
    let (claims, now) = now_claims();
    for accepted in [true, false] {
        let reviews = Arc::new(AtomicUsize::new(0));
        let federation = Federation::new(
            Box::new(FakeSource {
                published: Arc::new(Mutex::new(vec![server.key.public_jwk(&server.kid)])),
                fetches: Arc::new(AtomicUsize::new(0)),
            }),
            Some(Box::new(FakeReviewer(reviews.clone(), accepted))),
            FederationMetrics::default(),
        );
        let token = server.token(&claims);
        for _ in 0..3 {
            let result = federation
                .authenticate(&store, &token, None, SIGIL, now)
                .await;
            assert_eq!(result.is_ok(), accepted);
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 1, "cached");
        assert_eq!(federation.cached_reviews(), 1);
    }
}

/// A source whose fetches never finish (an API server that hangs).
struct HangingSource;

impl KeySource for HangingSource {
    fn fetch(&self) -> FetchFuture {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn while_stale_keys_are_refreshed_other_requests_do_not_wait() {
    let server = ApiServer::new("k1");
    let federation = Arc::new(Federation::new(
        Box::new(HangingSource),
        None,
        FederationMetrics::default(),
    ));
    let published = Published {
        issuer: SA_ISSUER.into(),
        jwks: json!({"keys": [server.key.public_jwk(&server.kid)]}),
    };
    let mut stale = KeySet::parse(published);
    stale.fetched = Instant::now() - KEYS_MAX_AGE;
    federation.keys.store(Some(Arc::new(stale)));
    // One request takes the refresh (and hangs in it)...
    let refreshing = tokio::spawn({
        let federation = federation.clone();
        async move { federation.keys(Some("k1")).await.is_some() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...the others use the keys there are at once.
    let keys = tokio::time::timeout(Duration::from_secs(1), federation.keys(Some("k1")))
        .await
        .expect("not blocked by the refresh");
    assert!(keys.is_some_and(|k| k.has_kid(Some("k1"))));
    // The hanging fetch times out and keeps the stale keys.
    assert!(refreshing.await.expect("task"));
}
