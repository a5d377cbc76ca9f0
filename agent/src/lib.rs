//! The token agent (`issuer agent`, DESIGN.md §5) and `issuer token`.
//!
//! The agent reads a client's credentials from its mounted Secret (or a
//! secretless client's projected ConfigMap and ServiceAccount token), keeps an
//! access token in `<output-dir>/token` (renewed at 80% of its lifetime,
//! retried with exponential backoff while the old token is still valid),
//! mirrors the credential files next to it, follows secret rotation by
//! watching kubelet's `..data` link, and answers `/readyz` with 200 only
//! while it holds an unexpired token. Neither the secret nor a token ever
//! reaches a log line.
//!
//! Its own crate because it runs in every workload pod: it depends on the
//! API types and the core only, never on the issuer's server code (the
//! issuer binary runs it as its `agent` and `token` subcommands).

pub mod credentials;
pub mod schedule;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use backon::BackoffBuilder;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;

use credentials::{ClientAuth, Credentials, CredentialsError, TOKEN_FILE};
use schedule::Validity;

/// How often the credential files are checked for a new version.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `issuer token`: print one access token.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// Folder holding the client's Secret as files (client_id,
    /// client_secret, token_url; kubelet's `..data` layout or plain files),
    /// or service_account_token instead of client_secret (federated_jwt).
    #[arg(long, env = "SIGIL_CREDENTIALS_DIR")]
    pub credentials_dir: PathBuf,

    /// Audience(s) to ask for, space-separated; default all the client may have.
    #[arg(long, env = "SIGIL_AUDIENCE")]
    pub audience: Option<String>,

    /// Scope to ask for, space-separated; default all the client may have.
    #[arg(long, env = "SIGIL_SCOPE")]
    pub scope: Option<String>,

    /// PEM CA bundle that signs the token URL's certificate; default
    /// `ca.crt` in the credentials folder if present, else the system roots.
    #[arg(long, env = "SIGIL_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Print only that a token was issued (client id and lifetime), never
    /// the token: for checks whose output lands in logs (`helm test`).
    /// `issuer agent` ignores it.
    #[arg(long)]
    pub check: bool,
}

/// `issuer agent`: keep a fresh token on disk.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    #[command(flatten)]
    pub token: TokenArgs,

    /// Folder to write `token` and a copy of the credential files into.
    #[arg(long, env = "SIGIL_OUTPUT_DIR")]
    pub output_dir: PathBuf,

    /// Address of /readyz and /healthz.
    #[arg(long, env = "SIGIL_HEALTH_LISTEN", default_value = "127.0.0.1:8099")]
    pub health_listen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("cannot build the HTTPS client (is the CA bundle PEM?): {0}")]
    HttpClient(String),
    #[error("token request to {url} failed: {reason}")]
    Request { url: String, reason: String },
    #[error("the token endpoint {url} answered {status}: {error}{description}")]
    Refused {
        url: String,
        status: u16,
        error: String,
        description: String,
    },
    #[error("the token endpoint {url} answered without a usable access token: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// An access token and how long it lives. Debug never shows the token.
pub struct IssuedToken {
    pub access_token: String,
    pub validity: Validity,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

/// HTTPS client trusting `ca_pem` only when given, else the system roots.
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, AgentError> {
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("sigil-token-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| AgentError::HttpClient(e.to_string()))?;
        if certs.is_empty() {
            return Err(AgentError::HttpClient(
                "no certificate in the CA bundle".into(),
            ));
        }
        builder = builder.tls_certs_only(certs);
    }
    builder
        .build()
        .map_err(|e| AgentError::HttpClient(e.to_string()))
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: Option<String>,
    error_description: Option<String>,
}

/// The `exp` claim of a JWT, read without verifying it (only to know when
/// it expires; the issuer is trusted through TLS).
fn jwt_exp(token: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: Option<i64>,
    }
    let claims = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(claims).ok()?;
    serde_json::from_slice::<Exp>(&bytes).ok()?.exp
}

/// RFC 6749 §2.3.1: id and secret form-urlencoded, then Basic.
fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(client_secret));
    format!("Basic {}", STANDARD.encode(pair))
}

/// RFC 7523 §2.2: how a ServiceAccount token is sent as the client's proof.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// One client-credentials request: client_secret_basic, or with a
/// ServiceAccount token (read from its file now, so each request sends the
/// token kubelet last wrote) as a jwt-bearer client assertion.
pub async fn fetch_token(
    http: &reqwest::Client,
    credentials: &Credentials,
    audience: Option<&str>,
    scope: Option<&str>,
) -> Result<IssuedToken, AgentError> {
    let url = credentials.token_url.clone();
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if let Some(scope) = scope.filter(|s| !s.trim().is_empty()) {
        form.append_pair("scope", scope.trim());
    }
    if let Some(audience) = audience.filter(|a| !a.trim().is_empty()) {
        form.append_pair("audience", audience.trim());
    }
    let mut request = http.post(&url);
    match &credentials.auth {
        ClientAuth::Secret(secret) => {
            request = request.header(
                reqwest::header::AUTHORIZATION,
                basic_authorization(&credentials.client_id, secret),
            );
        }
        ClientAuth::ServiceAccountToken { path } => {
            let assertion = credentials::service_account_token(path)?;
            form.append_pair("client_id", &credentials.client_id);
            form.append_pair("client_assertion_type", JWT_BEARER_ASSERTION);
            form.append_pair("client_assertion", &assertion);
        }
    }
    let sent_at = SystemTime::now();
    let response = request
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(form.finish())
        .send()
        .await
        .map_err(|e| AgentError::Request {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| AgentError::Request {
        url: url.clone(),
        reason: error_chain(&e),
    })?;
    if !status.is_success() {
        let answer: Option<ErrorAnswer> = serde_json::from_slice(&body).ok();
        let (error, description) = match answer {
            Some(a) => (
                a.error.unwrap_or_else(|| "unknown error".into()),
                a.error_description
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
            ),
            None => ("a body that is not an OAuth error".into(), String::new()),
        };
        return Err(AgentError::Refused {
            url,
            status: status.as_u16(),
            error,
            description,
        });
    }
    let bad = |reason: &str| AgentError::BadAnswer {
        url: url.clone(),
        reason: reason.to_owned(),
    };
    let answer: TokenAnswer =
        serde_json::from_slice(&body).map_err(|_| bad("the body is not the expected JSON"))?;
    let access_token = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token"))?;
    let validity = schedule::expiry(sent_at, answer.expires_in, jwt_exp(&access_token))
        .ok_or_else(|| bad("neither expires_in nor an exp claim"))?;
    if !validity.is_valid(SystemTime::now()) {
        return Err(bad("the token has already expired (is the clock right?)"));
    }
    Ok(IssuedToken {
        access_token,
        validity,
    })
}

/// The error and its causes on one line (reqwest hides the interesting part
/// in the source chain).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `issuer token`: one token on stdout (with `--check`, only that one was
/// issued).
pub async fn print_token(args: TokenArgs) -> Result<(), AgentError> {
    let (credentials, _) = credentials::read(&args.credentials_dir, args.ca_file.as_deref())?;
    let http = http_client(credentials.ca_pem.as_deref())?;
    let token = fetch_token(
        &http,
        &credentials,
        args.audience.as_deref(),
        args.scope.as_deref(),
    )
    .await?;
    if args.check {
        let lifetime = token
            .validity
            .expires_at
            .duration_since(token.validity.obtained_at)
            .unwrap_or_default();
        println!(
            "got a token for {} from {}, valid for {} s",
            credentials.client_id,
            credentials.token_url,
            lifetime.as_secs()
        );
    } else {
        println!("{}", token.access_token);
    }
    Ok(())
}

/// What `/readyz` reads: the expiry of the token on disk (Unix ms, 0 = none).
#[derive(Default)]
struct AgentHealth {
    expires_at_ms: AtomicU64,
}

impl AgentHealth {
    fn set(&self, validity: &Validity) {
        let ms = validity
            .expires_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.expires_at_ms.store(ms, Ordering::Release);
    }

    fn holds_valid_token(&self, now: SystemTime) -> bool {
        let ms = self.expires_at_ms.load(Ordering::Acquire);
        ms != 0
            && Validity {
                obtained_at: SystemTime::UNIX_EPOCH,
                expires_at: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
            }
            .is_valid(now)
    }
}

fn health_router(health: Arc<AgentHealth>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(agent_readyz))
        .with_state(health)
}

async fn agent_readyz(State(health): State<Arc<AgentHealth>>) -> (StatusCode, &'static str) {
    if health.holds_valid_token(SystemTime::now()) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no valid token yet\n")
    }
}

fn backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(schedule::MIN_RETRY)
        .with_max_delay(schedule::MAX_RETRY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The agent's loop state.
struct Agent {
    args: AgentArgs,
    health: Arc<AgentHealth>,
    /// The credentials in use, their version, and an HTTP client built for
    /// their CA.
    current: Option<(Credentials, credentials::Version, reqwest::Client)>,
    mirrored: Vec<String>,
    held: Option<Validity>,
    next_attempt: SystemTime,
    last_attempt_failed: bool,
    backoff: backon::ExponentialBackoff,
}

impl Agent {
    /// Re-reads the credentials if their version changed; mirrors them and
    /// decides whether to ask for a token now.
    fn refresh_credentials(&mut self) {
        let dir = &self.args.token.credentials_dir;
        let version = match credentials::version(dir) {
            Ok(version) => version,
            Err(error) => {
                tracing::warn!(%error, "cannot check the credentials");
                return;
            }
        };
        if self.current.as_ref().is_some_and(|(_, v, _)| *v == version) {
            return;
        }
        let (fresh, version) = match credentials::read(dir, self.args.token.ca_file.as_deref()) {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "cannot read the credentials; will retry");
                return;
            }
        };
        let http = match http_client(fresh.ca_pem.as_deref()) {
            Ok(http) => http,
            Err(error) => {
                tracing::warn!(%error, "cannot use the credentials' CA; will retry");
                return;
            }
        };
        match credentials::mirror(&self.args.output_dir, &fresh.files, &self.mirrored) {
            Ok(names) => self.mirrored = names,
            Err(error) => {
                tracing::warn!(dir = %self.args.output_dir.display(), %error, "cannot mirror the credential files; will retry");
                return;
            }
        }
        let identity_changed = self.current.as_ref().is_some_and(|(old, _, _)| {
            old.client_id != fresh.client_id || old.token_url != fresh.token_url
        });
        let first = self.current.is_none();
        let holds_valid = self
            .held
            .as_ref()
            .is_some_and(|v| v.is_valid(SystemTime::now()));
        if schedule::renew_on_credentials_change(
            holds_valid,
            self.last_attempt_failed,
            identity_changed,
        ) {
            self.next_attempt = SystemTime::now();
            self.backoff = backoff();
        }
        tracing::info!(
            client_id = %fresh.client_id,
            token_url = %fresh.token_url,
            files = fresh.files.len(),
            custom_ca = fresh.ca_pem.is_some(),
            "{}",
            if first { "read the credentials" } else { "the credentials changed; mirrored the new version" }
        );
        self.current = Some((fresh, version, http));
    }

    async fn attempt(&mut self) {
        let Some((credentials, _, http)) = &self.current else {
            return;
        };
        let result = fetch_token(
            http,
            credentials,
            self.args.token.audience.as_deref(),
            self.args.token.scope.as_deref(),
        )
        .await;
        let result = result.and_then(|token| {
            let path = self.args.output_dir.join(TOKEN_FILE);
            // Readable like the mirrored secret or ServiceAccount token
            // (kubelet's defaultMode, 0600 for the token's fsUser).
            let mode = credentials
                .files
                .iter()
                .find(|f| {
                    f.name == sigil_crds::secret_keys::CLIENT_SECRET
                        || f.name == sigil_crds::secret_keys::SERVICE_ACCOUNT_TOKEN
                })
                .map(|f| f.mode)
                .unwrap_or(0o600);
            credentials::write_atomically(
                &self.args.output_dir,
                TOKEN_FILE,
                token.access_token.as_bytes(),
                mode,
            )
            .map_err(|source| AgentError::Write { path, source })?;
            Ok(token.validity)
        });
        let now = SystemTime::now();
        match result {
            Ok(validity) => {
                let renew = schedule::renew_at(&validity, rand::random::<f64>());
                self.health.set(&validity);
                self.held = Some(validity);
                self.next_attempt = renew;
                self.last_attempt_failed = false;
                self.backoff = backoff();
                tracing::info!(
                    expires_in_s = validity
                        .expires_at
                        .duration_since(now)
                        .unwrap_or_default()
                        .as_secs(),
                    renew_in_s = renew.duration_since(now).unwrap_or_default().as_secs(),
                    "wrote a new access token"
                );
            }
            Err(error) => {
                let step = self.backoff.next().unwrap_or(schedule::MAX_RETRY);
                let delay = schedule::retry_delay(step, self.held.as_ref(), now);
                let valid = self.held.as_ref().is_some_and(|v| v.is_valid(now));
                self.next_attempt = now + delay;
                self.last_attempt_failed = true;
                tracing::warn!(
                    %error,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    old_token_still_valid = valid,
                    "could not renew the access token"
                );
            }
        }
    }
}

/// `issuer agent`: runs until SIGTERM/SIGINT.
pub async fn run_agent(args: AgentArgs) -> Result<(), AgentError> {
    std::fs::create_dir_all(&args.output_dir).map_err(|source| AgentError::Write {
        path: args.output_dir.clone(),
        source,
    })?;
    let health = Arc::new(AgentHealth::default());
    let listener = tokio::net::TcpListener::bind(args.health_listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: args.health_listen,
            source,
        })?;
    let router = health_router(health.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the health server stopped");
        }
    });
    tracing::info!(
        credentials = %args.token.credentials_dir.display(),
        output = %args.output_dir.display(),
        health = %args.health_listen,
        "token agent started"
    );
    let mut agent = Agent {
        args,
        health,
        current: None,
        mirrored: Vec::new(),
        held: None,
        next_attempt: SystemTime::now(),
        last_attempt_failed: false,
        backoff: backoff(),
    };
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        agent.refresh_credentials();
        let now = SystemTime::now();
        if agent.current.is_some() && now >= agent.next_attempt {
            agent.attempt().await;
        }
        let until_attempt = agent
            .next_attempt
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let nap = until_attempt.min(POLL_INTERVAL);
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = &mut shutdown => {
                tracing::info!("token agent stopping");
                return Ok(());
            }
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_urlencoded_first() {
        assert_eq!(
            basic_authorization("web.tasks", "a-b_c.d"),
            format!("Basic {}", STANDARD.encode("web.tasks:a-b_c.d"))
        );
        assert_eq!(
            basic_authorization("a b", "x:y"),
            format!("Basic {}", STANDARD.encode("a+b:x%3Ay"))
        );
    }

    #[test]
    fn reads_exp_without_verifying() {
        let claims = URL_SAFE_NO_PAD.encode(r#"{"exp":1700000000,"sub":"x"}"#);
        assert_eq!(jwt_exp(&format!("h.{claims}.s")), Some(1_700_000_000));
        assert_eq!(jwt_exp("not-a-jwt"), None);
    }

    #[test]
    fn readiness_follows_the_held_tokens_expiry() {
        let health = AgentHealth::default();
        let now = SystemTime::now();
        assert!(!health.holds_valid_token(now));
        health.set(&Validity {
            obtained_at: now,
            expires_at: now + Duration::from_secs(60),
        });
        assert!(health.holds_valid_token(now));
        assert!(!health.holds_valid_token(now + Duration::from_secs(61)));
    }

    /// A token endpoint on loopback that records each request's form body
    /// and Authorization header.
    async fn recording_token_endpoint() -> (String, Arc<std::sync::Mutex<Vec<(String, bool)>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let router = Router::new().route(
            "/oauth2/token",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let record = record.clone();
                async move {
                    let basic = headers.contains_key(axum::http::header::AUTHORIZATION);
                    record.lock().unwrap().push((body, basic));
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        r#"{"access_token":"at","token_type":"Bearer","expires_in":60}"#,
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (format!("http://{addr}/oauth2/token"), seen)
    }

    #[tokio::test]
    async fn a_service_account_token_is_sent_as_a_jwt_bearer_assertion_read_anew_each_time() {
        let (token_url, seen) = recording_token_endpoint().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service_account_token");
        std::fs::write(&path, "sa.one.x\n").unwrap();
        let credentials = Credentials {
            client_id: "worker.tasks".into(),
            auth: ClientAuth::ServiceAccountToken { path: path.clone() },
            token_url,
            ca_pem: None,
            files: Vec::new(),
        };
        let http = http_client(None).unwrap();
        let token = fetch_token(&http, &credentials, Some("event"), None)
            .await
            .unwrap();
        assert_eq!(token.access_token, "at");
        // Kubelet rotated the token: the next request sends the new one,
        // with nothing re-read by the caller.
        std::fs::write(&path, "sa.two.x").unwrap();
        fetch_token(&http, &credentials, Some("event"), None)
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        let forms: Vec<Vec<(String, String)>> = seen
            .iter()
            .map(|(body, basic)| {
                assert!(!basic, "no Basic header with an assertion");
                form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect()
            })
            .collect();
        let field = |form: &[(String, String)], key: &str| {
            form.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(forms.len(), 2);
        for form in &forms {
            assert_eq!(field(form, "grant_type"), "client_credentials");
            assert_eq!(field(form, "client_id"), "worker.tasks");
            assert_eq!(field(form, "client_assertion_type"), JWT_BEARER_ASSERTION);
            assert_eq!(field(form, "audience"), "event");
        }
        assert_eq!(field(&forms[0], "client_assertion"), "sa.one.x");
        assert_eq!(field(&forms[1], "client_assertion"), "sa.two.x");

        // A missing token file fails the request without sending it, and
        // the error names the file, never a token.
        std::fs::remove_file(&path).unwrap();
        let error = fetch_token(&http, &credentials, None, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("service_account_token"), "{error}");
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let token = IssuedToken {
            access_token: "eyJ.secret-token.sig".into(),
            validity: Validity {
                obtained_at: SystemTime::UNIX_EPOCH,
                expires_at: SystemTime::UNIX_EPOCH,
            },
        };
        assert!(!format!("{token:?}").contains("secret-token"));
    }
}
