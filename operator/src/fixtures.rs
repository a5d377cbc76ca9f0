//! The reconcilers' API calls, in order, against a scripted API server
//! (after kube-rs `controller-rs`): the `kube::Client` talks to one end of a
//! `tower_test` mock pair, and each test answers the other end request by
//! request, asserting method, path, query and body. No etcd, no cluster:
//! these pin down the write orders the reconcile modules promise.
//!
//! A test spawns the reconcile, walks through the requests it expects with
//! [`ApiServerVerifier::expect`], then hands the reconcile's task and the
//! context to [`ApiServerVerifier::finish`], which fails on any request
//! left over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{Method, Request, Response, StatusCode};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use serde_json::{Value, json};
use sigil_crds::{OAuthClient, OAuthClientStatus, SecretVerifier, SigningKey, SigningKeyStatus};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use crate::context::{Context, Result};
use crate::metrics::Metrics;
use crate::reconcile::{oauth_client, signing_key};

const NAMESPACE: &str = "tasks";
/// How long a test waits for the reconciler's next request.
const PATIENCE: Duration = Duration::from_secs(10);

/// One request the reconciler made.
#[derive(Debug)]
struct Call {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    content_type: Option<String>,
    accept: Option<String>,
    body: Option<Value>,
}

/// What kube's `get_metadata` asks for: the object's metadata only, as
/// `PartialObjectMetadata`; no Secret data crosses the wire.
const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

impl Call {
    fn body(&self) -> &Value {
        self.body
            .as_ref()
            .unwrap_or_else(|| panic!("{} {} has no body", self.method, self.path))
    }

    /// Asserts a server-side apply by the operator.
    fn assert_apply(&self) {
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{} {} is a server-side apply",
            self.method,
            self.path
        );
        assert_eq!(
            self.query.get("fieldManager").map(String::as_str),
            Some(crate::FIELD_MANAGER)
        );
        assert_eq!(self.query.get("force").map(String::as_str), Some("true"));
    }

    /// Whether this read asked for metadata only.
    fn metadata_only(&self) -> bool {
        self.accept
            .as_deref()
            .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
    }
}

/// The other end of the operator's client: answers each request as the
/// test scripts it.
struct ApiServerVerifier {
    handle: Handle<Request<Body>, Response<Body>>,
    /// `METHOD path` of every request answered so far, for failure messages.
    seen: Vec<String>,
}

impl ApiServerVerifier {
    /// Expects the next request to be `method path`, answers it with
    /// `reply`, and returns it for further assertions.
    async fn expect(
        &mut self,
        method: Method,
        path: &str,
        reply: impl FnOnce(&Call) -> Response<Body>,
    ) -> Call {
        let next = tokio::time::timeout(PATIENCE, self.handle.next_request()).await;
        let (request, send) = match next {
            Ok(Some(next)) => next,
            Ok(None) => panic!(
                "expected {method} {path}, but the client is gone; calls so far: {:?}",
                self.seen
            ),
            Err(_) => panic!(
                "expected {method} {path}, but no request came (did the reconcile return?); calls so far: {:?}",
                self.seen
            ),
        };
        let call = read_call(request).await;
        self.seen.push(format!("{} {}", call.method, call.path));
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "unexpected request; calls so far: {:?}",
            self.seen
        );
        send.send_response(reply(&call));
        call
    }

    /// Waits for the reconcile to return, failing on any request it makes
    /// meanwhile, then drops the context (every clone of the client) and
    /// asserts no request is left. Returns what the reconcile returned.
    async fn finish(mut self, run: JoinHandle<Result<Action>>, ctx: Arc<Context>) -> Action {
        let ended = tokio::time::timeout(PATIENCE, async {
            tokio::select! {
                joined = run => joined.expect("the reconcile task"),
                next = self.handle.next_request() => match next {
                    Some((request, _)) => panic!(
                        "unexpected further request {} {}; calls before it: {:?}",
                        request.method(),
                        request.uri(),
                        self.seen
                    ),
                    None => panic!("the client is gone before the reconcile returned"),
                },
            }
        })
        .await;
        let action = ended
            .expect("the reconcile returns")
            .expect("the reconcile succeeds");
        drop(ctx);
        match tokio::time::timeout(PATIENCE, self.handle.next_request()).await {
            Ok(None) => {}
            Ok(Some((request, _))) => panic!(
                "unexpected request {} {} after the reconcile returned",
                request.method(),
                request.uri()
            ),
            Err(_) => panic!("a clone of the client outlived the context"),
        }
        action
    }
}

async fn read_call(request: Request<Body>) -> Call {
    let (parts, body) = request.into_parts();
    let query = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (pair.to_owned(), String::new()),
        })
        .collect();
    let bytes = body.collect_bytes().await.expect("request body");
    let body =
        (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("request body is JSON"));
    Call {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query,
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        accept: parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
    }
}

/// A context whose client is the mock, with empty stores and no issuer's
/// TLS Secret.
fn test_context() -> (Arc<Context>, ApiServerVerifier) {
    test_context_with(None)
}

/// A context whose client is the mock, with empty stores and the issuer's
/// TLS Secret `tls` (read already).
fn test_context_with(tls: Option<Secret>) -> (Arc<Context>, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let reporter = Reporter {
        controller: crate::FIELD_MANAGER.to_owned(),
        instance: None,
    };
    let (oauth_clients, _) = reflector::store();
    let (signing_keys, _) = reflector::store();
    let issuer_url = "https://sigil.example.com";
    let ctx = Context::new(
        client.clone(),
        Recorder::new(client, reporter),
        &issuer_url.parse().expect("issuer URL"),
        crate::issuer_ca::testing::read(tls, issuer_url),
        Arc::new(Metrics::new()),
        oauth_clients,
        signing_keys,
        grant_sources(),
    );
    let verifier = ApiServerVerifier {
        handle,
        seen: Vec::new(),
    };
    (Arc::new(ctx), verifier)
}

/// Listed stores with the clients' namespace and no OAuthResources: every
/// audience is unclaimed, and open.
fn grant_sources() -> crate::grants::GrantSources {
    use kube::runtime::watcher::Event;
    let (resources, mut resource_writer) = reflector::store();
    resource_writer.apply_watcher_event(&Event::Init);
    resource_writer.apply_watcher_event(&Event::InitDone);
    let (namespaces, mut namespace_writer) = reflector::store();
    let mut namespace =
        kube::core::PartialObjectMeta::<k8s_openapi::api::core::v1::Namespace>::default();
    namespace.metadata.name = Some(NAMESPACE.to_owned());
    namespace_writer.apply_watcher_event(&Event::Init);
    namespace_writer.apply_watcher_event(&Event::InitApply(namespace));
    namespace_writer.apply_watcher_event(&Event::InitDone);
    crate::grants::GrantSources {
        resources,
        namespaces,
        unclaimed: sigil_crds::grant::UnclaimedAudiences::Open,
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

fn not_found(_: &Call) -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "NotFound", "code": 404,
            "message": "not found",
        }),
    )
}

fn ok(body: Value) -> impl FnOnce(&Call) -> Response<Body> {
    move |_| json_response(StatusCode::OK, &body)
}

/// What the API server returns for an apply or a create: the object sent.
fn echo(call: &Call) -> Response<Body> {
    let status = if call.method == Method::POST {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_response(status, call.body())
}

/// The answer to a status apply: `obj` with the status sent.
fn with_status<K: serde::Serialize>(obj: &K) -> impl FnOnce(&Call) -> Response<Body> {
    let mut obj = serde_json::to_value(obj).expect("object");
    move |call| {
        obj["status"] = call.body()["status"].clone();
        json_response(StatusCode::OK, &obj)
    }
}

fn decoded(data: &Value, key: &str) -> String {
    let b64 = data[key]
        .as_str()
        .unwrap_or_else(|| panic!("data has {key}: {data}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    String::from_utf8(bytes).expect("utf8")
}

/// Lower-case hex SHA-256, computed here rather than with the code under
/// test's own helper.
fn sha256_hex(text: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ready_condition(status: &Value) -> &Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or_else(|| panic!("a Ready condition: {status}"))
}

fn assert_event(call: &Call, type_: &str, reason: &str, kind: &str, name: &str) {
    let event = call.body();
    assert_eq!(event["type"], type_, "{event}");
    assert_eq!(event["reason"], reason, "{event}");
    assert_eq!(event["regarding"]["kind"], kind, "{event}");
    assert_eq!(event["regarding"]["name"], name, "{event}");
    assert_eq!(
        event["reportingController"],
        crate::FIELD_MANAGER,
        "{event}"
    );
}

const SECRETS: &str = "/api/v1/namespaces/tasks/secrets";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/tasks/events";
const OAUTH_CLIENT_STATUS: &str =
    "/apis/sigil.dev/v1alpha1/namespaces/tasks/oauthclients/svc/status";
const SIGNING_KEY_STATUS: &str =
    "/apis/sigil.dev/v1alpha1/namespaces/tasks/signingkeys/ring/status";
const SIGNING_KEY: &str = "/apis/sigil.dev/v1alpha1/namespaces/tasks/signingkeys/ring";

impl ApiServerVerifier {
    /// Expects a metadata-only GET of Secret `name`, answered with the
    /// metadata of `secret` (a Secret as JSON) or 404.
    async fn expect_secret_metadata(&mut self, name: &str, secret: Option<&Value>) {
        let path = format!("{SECRETS}/{name}");
        let call = match secret {
            Some(secret) => {
                let meta = json!({
                    "apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadata",
                    "metadata": secret["metadata"].clone(),
                });
                self.expect(Method::GET, &path, ok(meta)).await
            }
            None => self.expect(Method::GET, &path, not_found).await,
        };
        assert_eq!(
            call.accept.as_deref(),
            Some(METADATA_ONLY),
            "GET {path} reads metadata only"
        );
    }

    /// Expects a full GET (data included) of Secret `name`, answered with
    /// `secret`.
    async fn expect_secret_data(&mut self, name: &str, secret: Value) {
        let path = format!("{SECRETS}/{name}");
        let call = self.expect(Method::GET, &path, ok(secret)).await;
        assert!(!call.metadata_only(), "GET {path} reads the data");
    }
}

fn oauth_client(spec: Value) -> OAuthClient {
    let mut c = OAuthClient::new("svc", serde_json::from_value(spec).expect("spec"));
    c.metadata.namespace = Some(NAMESPACE.to_owned());
    c.metadata.uid = Some("uid-svc".to_owned());
    c.metadata.generation = Some(1);
    c.metadata.creation_timestamp = Some(Time(Timestamp::now() - SignedDuration::from_hours(72)));
    c
}

fn basic_spec() -> Value {
    json!({ "scopes": ["event.view"], "audiences": ["event"] })
}

/// A plausible generated secret, other than any the reconciler makes.
const OLD_SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// The Secret the operator wrote for `oac` holding `secret`.
fn our_secret(oac: &OAuthClient, secret: &str) -> Secret {
    use kube::Resource;
    let mut s = Secret {
        type_: Some("Opaque".to_owned()),
        data: Some(oauth_client::secret_data(
            &oac.client_id(),
            secret,
            "https://sigil.example.com/oauth2/token",
            "https://sigil.example.com",
            &oac.spec.scopes,
            &oac.spec.audiences,
            None,
        )),
        ..Default::default()
    };
    s.metadata.name = Some(oac.secret_name());
    s.metadata.namespace = Some(NAMESPACE.to_owned());
    s.metadata.labels = Some(BTreeMap::from([(
        sigil_crds::MANAGED_BY_LABEL.to_owned(),
        sigil_crds::MANAGED_BY_VALUE.to_owned(),
    )]));
    s.metadata.owner_references = Some(vec![oac.controller_owner_ref(&()).expect("uid")]);
    s
}

/// Status of a client whose only secret was made `age` ago.
fn status_made_ago(oac: &OAuthClient, secret: &str, age: SignedDuration) -> OAuthClientStatus {
    let made = Time(Timestamp::from_second((Timestamp::now() - age).as_second()).expect("time"));
    OAuthClientStatus {
        client_id: Some(oac.client_id()),
        secret_name: Some(oac.secret_name()),
        secret_verifiers: vec![SecretVerifier {
            sha256: sha256_hex(secret),
            created_at: made.clone(),
            expires_at: None,
        }],
        secret_rotated_at: Some(made.clone()),
        observed_generation: Some(1),
        conditions: vec![
            Condition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                reason: "CredentialsReady".to_owned(),
                message: "client secret in Secret svc-oauth".to_owned(),
                observed_generation: Some(1),
                last_transition_time: made.clone(),
            },
            Condition {
                type_: "Granted".to_owned(),
                status: "True".to_owned(),
                reason: "Granted".to_owned(),
                message: "every requested audience, scope and claim is granted".to_owned(),
                observed_generation: Some(1),
                last_transition_time: made,
            },
        ],
        grant: Some(sigil_crds::EffectiveGrant {
            audiences: oac.spec.audiences.clone(),
            scopes: oac.spec.scopes.clone(),
            ..Default::default()
        }),
    }
}

/// Asserts the Secret apply for `oac` and returns its `client_secret`.
fn assert_client_secret_apply(call: &Call, oac: &OAuthClient) -> String {
    call.assert_apply();
    let body = call.body();
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["type"], "Opaque");
    assert_eq!(body["metadata"]["name"], "svc-oauth");
    assert_eq!(
        body["metadata"]["labels"][sigil_crds::MANAGED_BY_LABEL],
        sigil_crds::MANAGED_BY_VALUE
    );
    let owners = body["metadata"]["ownerReferences"]
        .as_array()
        .expect("owner references");
    assert_eq!(owners.len(), 1, "{body}");
    assert_eq!(owners[0]["kind"], "OAuthClient");
    assert_eq!(owners[0]["name"], "svc");
    assert_eq!(owners[0]["uid"], "uid-svc");
    assert_eq!(owners[0]["controller"], true);
    let data = &body["data"];
    assert_eq!(decoded(data, "client_id"), oac.client_id());
    let secret = decoded(data, "client_secret");
    assert_eq!(secret.len(), 43, "256 bits, base64url without padding");
    assert!(
        secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "base64url"
    );
    let credentials: Value =
        serde_json::from_str(&decoded(data, "credentials.json")).expect("credentials.json");
    assert_eq!(credentials["client_secret"], secret.as_str());
    secret
}

fn verifiers(status_call: &Call) -> Vec<SecretVerifier> {
    serde_json::from_value(status_call.body()["status"]["secretVerifiers"].clone())
        .expect("secretVerifiers")
}

#[tokio::test]
async fn a_new_client_gets_its_secret_before_its_verifier() {
    let (ctx, mut api) = test_context();
    let oac = oauth_client(basic_spec());
    let run = tokio::spawn(oauth_client::reconcile(Arc::new(oac.clone()), ctx.clone()));

    api.expect_secret_metadata("svc-oauth", None).await;
    let apply = api
        .expect(Method::PATCH, &format!("{SECRETS}/svc-oauth"), echo)
        .await;
    let secret = assert_client_secret_apply(&apply, &oac);
    let status = api
        .expect(Method::PATCH, OAUTH_CLIENT_STATUS, with_status(&oac))
        .await;
    status.assert_apply();
    let sent = &status.body()["status"];
    let v = verifiers(&status);
    assert_eq!(v.len(), 1, "{sent}");
    assert_eq!(
        v[0].sha256,
        sha256_hex(&secret),
        "the verifier is the digest of the secret in the Secret"
    );
    assert_eq!(v[0].expires_at, None);
    assert!(
        !sent.to_string().contains(&secret),
        "status never holds the secret"
    );
    assert_eq!(sent["clientId"], "svc.tasks");
    assert_eq!(sent["secretName"], "svc-oauth");
    assert_eq!(ready_condition(sent)["status"], "True");
    assert_eq!(ready_condition(sent)["reason"], "CredentialsReady");
    let event = api.expect(Method::POST, EVENTS, echo).await;
    assert_event(&event, "Normal", "Created", "OAuthClient", "svc");
    assert!(!event.body().to_string().contains(&secret));

    let action = api.finish(run, ctx).await;
    assert_eq!(
        action,
        Action::await_change(),
        "no rotation: nothing to wait for"
    );
}

#[tokio::test]
async fn a_rotation_publishes_the_new_verifier_before_the_new_secret() {
    let (ctx, mut api) = test_context();
    let mut oac = oauth_client(json!({
        "scopes": ["event.view"],
        "audiences": ["event"],
        "secretRotation": { "interval": "24h", "gracePeriod": "1h" },
    }));
    oac.status = Some(status_made_ago(
        &oac,
        OLD_SECRET,
        SignedDuration::from_hours(48),
    ));
    let existing = serde_json::to_value(our_secret(&oac, OLD_SECRET)).expect("secret");
    let started = Timestamp::now();
    let run = tokio::spawn(oauth_client::reconcile(Arc::new(oac.clone()), ctx.clone()));

    api.expect_secret_metadata("svc-oauth", Some(&existing))
        .await;
    api.expect_secret_data("svc-oauth", existing).await;
    let status = api
        .expect(Method::PATCH, OAUTH_CLIENT_STATUS, with_status(&oac))
        .await;
    status.assert_apply();
    let v = verifiers(&status);
    assert_eq!(v.len(), 2, "new and previous: {:?}", v);
    assert_eq!(v[0].expires_at, None, "the new secret comes first");
    assert_ne!(v[0].sha256, sha256_hex(OLD_SECRET));
    assert_eq!(v[1].sha256, sha256_hex(OLD_SECRET));
    let expires = v[1].expires_at.as_ref().expect("the old secret expires").0;
    let grace = expires.duration_since(started);
    assert!(
        grace > SignedDuration::from_mins(59) && grace <= SignedDuration::from_mins(61),
        "the old secret works for the 1h grace period: {grace:?}"
    );
    assert_eq!(ready_condition(&status.body()["status"])["status"], "True");

    let apply = api
        .expect(Method::PATCH, &format!("{SECRETS}/svc-oauth"), echo)
        .await;
    let secret = assert_client_secret_apply(&apply, &oac);
    assert_ne!(secret, OLD_SECRET, "rotated");
    assert_eq!(
        v[0].sha256,
        sha256_hex(&secret),
        "the Secret holds the secret status already accepted"
    );
    let event = api.expect(Method::POST, EVENTS, echo).await;
    assert_event(&event, "Normal", "Rotated", "OAuthClient", "svc");

    api.finish(run, ctx).await;
}

#[tokio::test]
async fn a_deleted_secret_is_repaired_verifier_first() {
    let (ctx, mut api) = test_context();
    let mut oac = oauth_client(basic_spec());
    oac.status = Some(status_made_ago(
        &oac,
        OLD_SECRET,
        SignedDuration::from_hours(1),
    ));
    let run = tokio::spawn(oauth_client::reconcile(Arc::new(oac.clone()), ctx.clone()));

    api.expect_secret_metadata("svc-oauth", None).await;
    let status = api
        .expect(Method::PATCH, OAUTH_CLIENT_STATUS, with_status(&oac))
        .await;
    let v = verifiers(&status);
    assert_eq!(v.len(), 1, "no rotation, so no grace: {v:?}");
    assert_ne!(v[0].sha256, sha256_hex(OLD_SECRET));
    let apply = api
        .expect(Method::PATCH, &format!("{SECRETS}/svc-oauth"), echo)
        .await;
    let secret = assert_client_secret_apply(&apply, &oac);
    assert_eq!(v[0].sha256, sha256_hex(&secret));
    let event = api.expect(Method::POST, EVENTS, echo).await;
    assert_event(&event, "Warning", "SecretRecreated", "OAuthClient", "svc");

    api.finish(run, ctx).await;
}

/// Secrets under the client's `secretName` that are not its own: a user's,
/// one with Sigil's label but no owner, one owned by an earlier OAuthClient
/// of the same name (another uid), one whose owner is not its controller.
fn foreign_secrets() -> Vec<(&'static str, Value)> {
    let managed = json!({ sigil_crds::MANAGED_BY_LABEL: sigil_crds::MANAGED_BY_VALUE });
    let owner = |uid: &str, controller: bool| {
        json!([{
            "apiVersion": "sigil.dev/v1alpha1", "kind": "OAuthClient", "name": "svc",
            "uid": uid, "controller": controller,
        }])
    };
    let secret = |labels: Value, owners: Value| {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "svc-oauth", "namespace": NAMESPACE, "uid": "uid-theirs",
                "labels": labels, "ownerReferences": owners,
            },
            "type": "Opaque",
            "data": { "client_secret": "aHVudGVyMg==" },
        })
    };
    vec![
        ("a user's Secret", secret(json!({}), json!([]))),
        ("labelled, no owner", secret(managed.clone(), json!([]))),
        (
            "labelled, an earlier client's",
            secret(managed.clone(), owner("uid-earlier", true)),
        ),
        (
            "labelled, owned but not controlled",
            secret(managed, owner("uid-svc", false)),
        ),
    ]
}

#[tokio::test]
async fn a_secret_that_is_not_ours_is_refused_unread_status_then_event() {
    for (what, theirs) in foreign_secrets() {
        let (ctx, mut api) = test_context();
        let oac = oauth_client(basic_spec());
        let run = tokio::spawn(oauth_client::reconcile(Arc::new(oac.clone()), ctx.clone()));

        // Its metadata only: the next request is the status write, not a
        // read of its data.
        api.expect_secret_metadata("svc-oauth", Some(&theirs)).await;
        let status = api
            .expect(Method::PATCH, OAUTH_CLIENT_STATUS, with_status(&oac))
            .await;
        status.assert_apply();
        let sent = &status.body()["status"];
        assert_eq!(ready_condition(sent)["status"], "False", "{what}");
        assert_eq!(ready_condition(sent)["reason"], "SecretConflict", "{what}");
        assert!(
            ready_condition(sent)["message"]
                .as_str()
                .is_some_and(|m| m.contains("Secret svc-oauth")),
            "{what}: the message names the Secret: {sent}"
        );
        assert!(
            sent.get("secretVerifiers").is_none(),
            "{what}: no credentials: {sent}"
        );
        let event = api.expect(Method::POST, EVENTS, echo).await;
        assert_event(&event, "Warning", "SecretConflict", "OAuthClient", "svc");
        assert_eq!(event.body()["action"], "WriteSecret");

        // In particular, no write to their Secret.
        let action = api.finish(run, ctx).await;
        assert_eq!(action, Action::await_change(), "{what}");
    }
}

#[tokio::test]
async fn a_secret_written_before_a_crash_is_adopted_status_only() {
    // A brand-new client's Secret was written, then the operator died
    // before status: the next pass reads the Secret it owns and publishes
    // the verifier of the secret in it, without a new secret.
    let (ctx, mut api) = test_context();
    let oac = oauth_client(basic_spec());
    let existing = serde_json::to_value(our_secret(&oac, OLD_SECRET)).expect("secret");
    let run = tokio::spawn(oauth_client::reconcile(Arc::new(oac.clone()), ctx.clone()));

    api.expect_secret_metadata("svc-oauth", Some(&existing))
        .await;
    api.expect_secret_data("svc-oauth", existing).await;
    let status = api
        .expect(Method::PATCH, OAUTH_CLIENT_STATUS, with_status(&oac))
        .await;
    let v = verifiers(&status);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].sha256, sha256_hex(OLD_SECRET), "adopted, not replaced");
    assert_eq!(ready_condition(&status.body()["status"])["status"], "True");
    let event = api.expect(Method::POST, EVENTS, echo).await;
    assert_event(&event, "Normal", "Adopted", "OAuthClient", "svc");

    api.finish(run, ctx).await;
}

#[tokio::test]
async fn a_new_ca_bundle_is_written_and_a_departed_one_removed_without_events() {
    let (tls, bundle) = crate::issuer_ca::testing::tls_secret(&["sigil.example.com"]);
    let mut oac = oauth_client(basic_spec());
    oac.status = Some(status_made_ago(
        &oac,
        OLD_SECRET,
        SignedDuration::from_hours(1),
    ));
    let without = serde_json::to_value(our_secret(&oac, OLD_SECRET)).expect("secret");

    // Published: the Secret gets ca.crt, and only that changes.
    let (ctx, mut api) = test_context_with(Some(tls));
    let run = tokio::spawn(oauth_client::reconcile(Arc::new(oac.clone()), ctx.clone()));
    api.expect_secret_metadata("svc-oauth", Some(&without))
        .await;
    api.expect_secret_data("svc-oauth", without.clone()).await;
    let apply = api
        .expect(Method::PATCH, &format!("{SECRETS}/svc-oauth"), echo)
        .await;
    assert_eq!(assert_client_secret_apply(&apply, &oac), OLD_SECRET);
    let data = &apply.body()["data"];
    assert_eq!(decoded(data, "ca.crt"), bundle);
    let credentials = decoded(data, "credentials.json");
    assert!(!credentials.contains("CERTIFICATE"), "{credentials}");
    // No status write (nothing changed there) and no Event.
    api.finish(run, ctx).await;

    // Gone (no TLS Secret): the apply leaves ca.crt out, which removes it.
    let mut with = without;
    with["data"]["ca.crt"] = json!(base64::engine::general_purpose::STANDARD.encode(&bundle));
    let (ctx, mut api) = test_context();
    let run = tokio::spawn(oauth_client::reconcile(Arc::new(oac.clone()), ctx.clone()));
    api.expect_secret_metadata("svc-oauth", Some(&with)).await;
    api.expect_secret_data("svc-oauth", with.clone()).await;
    let apply = api
        .expect(Method::PATCH, &format!("{SECRETS}/svc-oauth"), echo)
        .await;
    assert_eq!(assert_client_secret_apply(&apply, &oac), OLD_SECRET);
    assert!(apply.body()["data"].get("ca.crt").is_none());
    api.finish(run, ctx).await;

    // Not served with that certificate (the issuer URL is another host):
    // nothing to publish either.
    let (other, _) = crate::issuer_ca::testing::tls_secret(&["sigil-issuer.sigil-system.svc"]);
    let (ctx, mut api) = test_context_with(Some(other));
    let run = tokio::spawn(oauth_client::reconcile(Arc::new(oac.clone()), ctx.clone()));
    api.expect_secret_metadata("svc-oauth", Some(&with)).await;
    api.expect_secret_data("svc-oauth", with).await;
    let apply = api
        .expect(Method::PATCH, &format!("{SECRETS}/svc-oauth"), echo)
        .await;
    assert!(apply.body()["data"].get("ca.crt").is_none());
    api.finish(run, ctx).await;
}

fn signing_key() -> SigningKey {
    let mut sk = SigningKey::new("ring", serde_json::from_value(json!({})).expect("spec"));
    sk.metadata.namespace = Some(NAMESPACE.to_owned());
    sk.metadata.uid = Some("uid-ring".to_owned());
    sk.metadata.generation = Some(1);
    sk
}

#[tokio::test]
async fn a_new_ring_stores_its_key_before_status_names_it() {
    let (ctx, mut api) = test_context();
    let sk = signing_key();
    let run = tokio::spawn(signing_key::reconcile(Arc::new(sk.clone()), ctx.clone()));
    // The SigningKey is read fresh: the watch cache may lag its own status.
    let current = serde_json::to_value(&sk).expect("json");
    api.expect(Method::GET, SIGNING_KEY, |_| {
        json_response(StatusCode::OK, &current)
    })
    .await;

    api.expect_secret_metadata("ring-keys", None).await;
    let apply = api
        .expect(Method::PATCH, &format!("{SECRETS}/ring-keys"), echo)
        .await;
    apply.assert_apply();
    let body = apply.body();
    assert_eq!(body["metadata"]["name"], "ring-keys");
    assert_eq!(body["type"], "Opaque");
    assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "SigningKey");
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-ring");
    assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        body["metadata"]["labels"][sigil_crds::SIGNING_KEY_LABEL],
        "ring",
        "the label the issuer's watch selects"
    );
    let data = body["data"].as_object().expect("data");
    assert_eq!(data.len(), 1, "one key: {body}");
    let kid = data.keys().next().expect("a kid").clone();
    let pem = decoded(&body["data"], &kid);
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
    assert_eq!(
        sigil_core::keys::kid(sigil_crds::SigningAlgorithm::ES256, &pem).expect("a key"),
        kid,
        "stored under its own kid"
    );

    let status = api
        .expect(Method::PATCH, SIGNING_KEY_STATUS, with_status(&sk))
        .await;
    status.assert_apply();
    let sent: SigningKeyStatus =
        serde_json::from_value(status.body()["status"].clone()).expect("status");
    assert_eq!(sent.active_kid.as_deref(), Some(kid.as_str()));
    assert_eq!(sent.keys.len(), 1);
    assert_eq!(sent.keys[0].kid, kid);
    assert_eq!(sent.keys[0].state, sigil_crds::KeyState::Active);
    assert_eq!(sent.secret_name.as_deref(), Some("ring-keys"));
    assert_eq!(ready_condition(&status.body()["status"])["status"], "True");
    assert!(!status.body().to_string().contains("PRIVATE KEY"));

    let event = api.expect(Method::POST, EVENTS, echo).await;
    assert_event(&event, "Normal", "KeyGenerated", "SigningKey", "ring");

    // The Secret already holds exactly the ring: no prune.
    api.finish(run, ctx).await;
}

#[tokio::test]
async fn a_key_secret_that_is_not_ours_is_refused_unread() {
    // Sigil's label but no owner: someone else's, whatever it says.
    let (ctx, mut api) = test_context();
    let sk = signing_key();
    let theirs = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "ring-keys", "namespace": NAMESPACE, "uid": "uid-theirs",
            "labels": { sigil_crds::MANAGED_BY_LABEL: sigil_crds::MANAGED_BY_VALUE },
        },
        "type": "Opaque",
        "data": { "kid": "LS0tLS1CRUdJTg==" },
    });
    let run = tokio::spawn(signing_key::reconcile(Arc::new(sk.clone()), ctx.clone()));
    // The SigningKey is read fresh: the watch cache may lag its own status.
    let current = serde_json::to_value(&sk).expect("json");
    api.expect(Method::GET, SIGNING_KEY, |_| {
        json_response(StatusCode::OK, &current)
    })
    .await;

    api.expect_secret_metadata("ring-keys", Some(&theirs)).await;
    let status = api
        .expect(Method::PATCH, SIGNING_KEY_STATUS, with_status(&sk))
        .await;
    let sent = &status.body()["status"];
    assert_eq!(ready_condition(sent)["status"], "False");
    assert_eq!(ready_condition(sent)["reason"], "SecretConflict");
    let event = api.expect(Method::POST, EVENTS, echo).await;
    assert_event(&event, "Warning", "SecretConflict", "SigningKey", "ring");

    api.finish(run, ctx).await;
}
