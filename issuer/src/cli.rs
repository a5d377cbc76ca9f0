//! The command line of DESIGN.md §8 / §8b. Every flag also reads
//! `SIGIL_<FLAG>` from the environment.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::ResourceRequirements;
use sigil_core::IssuerUrl;

use crate::http::client_auth::ReplayLimits;
use crate::http::{self, serve};
use crate::index::{ClientLimits, Store, TokenTyp};
use crate::inject::admission::{self, AdmissionState, ClientDirectory};
use crate::metrics::Metrics;
use crate::source::standalone;
use crate::state::{self, App, Settings};
use sigil_agent::{self as agent, AgentArgs, TokenArgs};

#[derive(Parser, Debug)]
#[command(
    name = "issuer",
    version,
    about = "Sigil's OAuth2 issuer: token, JWKS, discovery and introspection endpoints",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The log flag of the server and of every subcommand.
#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Log format: json (one object per line) or text; the operator takes
    /// the same flag. Text by default, as `issuer` is also run by hand
    /// (standalone, `token`); the chart sets it. For `agent` and `token`
    /// give it after the subcommand (`issuer token --log-format json`), as
    /// server flags before a subcommand are refused.
    #[arg(long, global = true, env = sigil_crds::logging::LOG_FORMAT_ENV, value_enum, default_value_t = sigil_crds::logging::LogFormat::Text)]
    pub log_format: sigil_crds::logging::LogFormat,
}

/// Subcommands other than serving.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// The token agent sidecar: keeps a fresh access token in
    /// <output-dir>/token next to a copy of the credential files.
    Agent(AgentArgs),
    /// Prints one access token for the credentials in a folder.
    Token(TokenArgs),
}

/// The agent sidecar's resources when the chart gives none.
const DEFAULT_AGENT_RESOURCES: &str =
    r#"{"requests":{"cpu":"10m","memory":"16Mi"},"limits":{"memory":"64Mi"}}"#;

/// `5s`, `1m30s`, `250ms` (jiff's friendly format) or ISO 8601 (`PT5S`).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("not a duration such as 5s or 1m30s: {e}"))?;
    std::time::Duration::try_from(duration)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "must be more than zero".to_owned())
}

/// An address, or empty for none.
fn parse_optional_addr(text: &str) -> Result<OptionalAddr, String> {
    if text.is_empty() {
        return Ok(OptionalAddr(None));
    }
    text.parse()
        .map(|addr| OptionalAddr(Some(addr)))
        .map_err(|e| format!("not an address such as 0.0.0.0:9443 (or empty for none): {e}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn parse_resources(json: &str) -> Result<ResourceRequirements, String> {
    serde_json::from_str(json).map_err(|e| {
        format!(
            "not a JSON ResourceRequirements ({{\"requests\":{{...}},\"limits\":{{...}}}}): {e}"
        )
    })
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// The issuer URL (`iss`); one trailing '/' is dropped. Endpoints live
    /// under its path.
    #[arg(long, env = "SIGIL_ISSUER_URL")]
    pub issuer_url: IssuerUrl,

    /// Address of the token/JWKS/discovery/introspection API.
    #[arg(long, env = "SIGIL_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "SIGIL_HEALTH_LISTEN", default_value = "0.0.0.0:8081")]
    pub health_listen: SocketAddr,

    /// After SIGTERM, keep serving this long with /readyz failing, so
    /// Services and load balancers stop sending new connections before the
    /// issuer exits (Kubernetes removes a terminating pod's endpoints
    /// asynchronously). Must stay below the pod's grace period.
    #[arg(long, env = "SIGIL_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: std::time::Duration,

    /// Namespace of the issuer, its SigningKeys and their Secrets.
    #[arg(long, env = "SIGIL_NAMESPACE", default_value = "sigil-system")]
    pub namespace: String,

    /// The SigningKey that signs tokens of clients that name none.
    #[arg(long, env = "SIGIL_SIGNING_KEY", default_value = "default")]
    pub signing_key: String,

    /// PEM certificate chain for HTTPS (reloaded when the file changes).
    #[arg(long, env = "SIGIL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for HTTPS.
    #[arg(long, env = "SIGIL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating
    /// proxy). Loopback addresses never need it.
    #[arg(long, env = "SIGIL_ALLOW_PLAIN_HTTP")]
    pub allow_plain_http: bool,

    /// Standalone mode: a folder of OAuthClient and SigningKey manifests
    /// (YAML, several documents per file) instead of a cluster.
    #[arg(long, env = "SIGIL_MANIFESTS", requires = "secrets")]
    pub manifests: Option<PathBuf>,

    /// Standalone mode: JSON object {"<client_id>": "<secret>"}; missing
    /// clients get a generated secret written back (mode 0600).
    #[arg(long, env = "SIGIL_SECRETS", requires = "manifests")]
    pub secrets: Option<PathBuf>,

    /// Standalone mode: keep signing keys here across restarts.
    #[arg(long, env = "SIGIL_STATE_DIR", requires = "manifests")]
    pub state_dir: Option<PathBuf>,

    /// `typ` header of access tokens: at+jwt (RFC 9068) or JWT (for
    /// verifiers such as Spring/Nimbus that reject at+jwt).
    #[arg(long, env = "SIGIL_TOKEN_TYP", value_enum, default_value = "at+jwt")]
    pub token_typ: TokenTyp,

    /// Failed client authentications allowed per minute per source address
    /// (all at once, then one per 60s/N); past that, the source's failed
    /// requests get 429 with Retry-After. Correct credentials always pass.
    #[arg(long, env = "SIGIL_FAILED_AUTH_PER_MINUTE", default_value = "60")]
    pub failed_auth_per_minute: NonZeroU32,

    /// Failed client authentications logged per second at most, all
    /// sources together (that many at once). Only failures within their
    /// source's budget are logged, plus the first one over it; the others
    /// are counted in sigil_issuer_failed_auth_logs_suppressed_total and
    /// summed up in one line every 30 s.
    #[arg(long, env = "SIGIL_FAILED_AUTH_LOG_LINES_PER_SECOND", default_value_t = NonZeroU32::new(state::DEFAULT_FAILED_AUTH_LOG_LINES_PER_SECOND).unwrap_or(NonZeroU32::MIN))]
    pub failed_auth_log_lines_per_second: NonZeroU32,

    /// Source addresses (IPv6: /64 prefixes) whose failures are counted at
    /// most; at the limit the one closest to a full budget is forgotten.
    #[arg(long, env = "SIGIL_MAX_TRACKED_SOURCES", default_value_t = state::DEFAULT_MAX_TRACKED_SOURCES)]
    pub max_tracked_sources: usize,

    /// Unexpired private_key_jwt assertion ids remembered against replay,
    /// all clients together (about 150 bytes each, whatever the jti's
    /// length; jtis over 256 bytes are refused). When full, new assertions
    /// are refused with invalid_client until old ones expire (≤ 1 h).
    #[arg(long, env = "SIGIL_MAX_REMEMBERED_ASSERTIONS", default_value_t = ReplayLimits::default().total)]
    pub max_remembered_assertions: usize,

    /// One client's share of the remembered assertions (at most half the
    /// total), so one client cannot make other clients' assertions fail.
    #[arg(long, env = "SIGIL_MAX_REMEMBERED_ASSERTIONS_PER_CLIENT", default_value_t = ReplayLimits::default().per_client)]
    pub max_remembered_assertions_per_client: usize,

    /// Largest spec.additionalClaims (as JSON, bytes) an OAuthClient may
    /// have; a client over it is not loaded (logged, counted in
    /// sigil_issuer_clients_over_limits).
    #[arg(long, env = "SIGIL_MAX_ADDITIONAL_CLAIMS_BYTES", default_value_t = ClientLimits::default().additional_claims_bytes)]
    pub max_additional_claims_bytes: usize,

    /// Largest spec.jwks (as JSON, bytes) an OAuthClient may have; a client
    /// over it is not loaded.
    #[arg(long, env = "SIGIL_MAX_CLIENT_JWKS_BYTES", default_value_t = ClientLimits::default().jwks_bytes)]
    pub max_client_jwks_bytes: usize,

    /// Most keys in an OAuthClient's spec.jwks; a client over it is not
    /// loaded.
    #[arg(long, env = "SIGIL_MAX_CLIENT_JWKS_KEYS", default_value_t = ClientLimits::default().jwks_keys)]
    pub max_client_jwks_keys: usize,

    /// Image of the token agent sidecar the pod webhook injects (the
    /// issuer's own image: `issuer agent`).
    #[arg(
        long,
        env = "SIGIL_AGENT_IMAGE",
        default_value = concat!("ghcr.io/sigil-dev/sigil-issuer:", env!("CARGO_PKG_VERSION"))
    )]
    pub agent_image: String,

    /// imagePullPolicy of the agent sidecar; unset: Kubernetes' default.
    #[arg(long, env = "SIGIL_AGENT_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub agent_image_pull_policy: Option<String>,

    /// Resources of the agent sidecar, as JSON ResourceRequirements
    /// (`{"requests":{"cpu":"10m"},"limits":{"memory":"64Mi"}}`; `{}` for none).
    #[arg(long, env = "SIGIL_AGENT_RESOURCES", value_parser = parse_resources, default_value = DEFAULT_AGENT_RESOURCES)]
    pub agent_resources: ResourceRequirements,

    /// Port of the agent sidecar's /readyz and /healthz inside the pod.
    #[arg(long, env = "SIGIL_AGENT_HEALTH_PORT", default_value_t = 8099)]
    pub agent_health_port: u16,

    /// Address of the pod admission webhook (POST /webhooks/pods), cluster
    /// mode only, over TLS with --tls-cert/--tls-key (the API server calls
    /// webhooks over HTTPS only; without TLS the webhook is off). Its own
    /// port, so that only the API server needs to reach it. Empty: off.
    #[arg(long, env = "SIGIL_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443", value_parser = parse_optional_addr)]
    pub webhook_listen: OptionalAddr,

    /// Open connections per listener (API, webhook, health). At the limit,
    /// the connection idle longest (no request in flight: not yet sent one,
    /// or an idle keep-alive) is closed to make room for a new one; only
    /// when every connection has a request in flight is the new one closed
    /// as soon as it is accepted.
    #[arg(long, env = "SIGIL_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Open connections per listener from one source address (IPv6: one
    /// /64), with the same rule among that source's connections: its own
    /// idle connection longest idle is closed for its new one. Clients
    /// behind one NAT or gateway share it; since idle connections make
    /// room, it bounds their requests in flight at once. At most
    /// --max-connections.
    #[arg(long, env = "SIGIL_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_source: u32,

    /// Time a client has for the TLS handshake and for sending a request's
    /// headers: the first request's counted from the accept (plain) or the
    /// end of the handshake (TLS), HTTP/1.1 or HTTP/2; an idle HTTP/1.1
    /// keep-alive connection is closed after it.
    #[arg(long, env = "SIGIL_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub header_read_timeout: std::time::Duration,

    /// Time from a request's headers to its response, reading the body
    /// included; then 408 and the connection is closed.
    #[arg(long, env = "SIGIL_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: std::time::Duration,

    /// A connection on which the issuer has sent nothing and no new request
    /// started for this long is closed (silent or idle HTTP/2 connections,
    /// clients that stop reading). Must exceed --request-timeout.
    #[arg(long, env = "SIGIL_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: std::time::Duration,

    /// federated_jwt (cluster mode): besides verifying a ServiceAccount
    /// token offline, ask the API server with a TokenReview whether it is
    /// still good, which catches deleted ServiceAccounts and pods. Results
    /// are cached for 10 s (at most 10000). Needs RBAC `create` on
    /// `tokenreviews`.
    #[arg(long, env = "SIGIL_SERVICE_ACCOUNT_TOKEN_REVIEW")]
    pub service_account_token_review: bool,
}

impl ServeArgs {
    /// The connection limits of every listener.
    pub fn limits(&self) -> serve::Limits {
        serve::Limits {
            max_connections: self.max_connections as usize,
            max_connections_per_source: self.max_connections_per_source as usize,
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            idle_timeout: self.idle_timeout,
        }
    }

    pub fn settings(&self) -> Settings {
        Settings {
            issuer_url: self.issuer_url.clone(),
            token_typ: self.token_typ,
            failed_auth_per_minute: self.failed_auth_per_minute,
            max_tracked_sources: self.max_tracked_sources,
            failed_auth_log_lines_per_second: self.failed_auth_log_lines_per_second,
            replay: ReplayLimits {
                total: self.max_remembered_assertions,
                per_client: self.max_remembered_assertions_per_client,
            },
        }
    }

    pub fn client_limits(&self) -> ClientLimits {
        ClientLimits {
            additional_claims_bytes: self.max_additional_claims_bytes,
            jwks_bytes: self.max_client_jwks_bytes,
            jwks_keys: self.max_client_jwks_keys,
        }
    }

    /// What the pod webhook injects.
    pub fn injection_config(&self) -> crate::inject::mutate::InjectionConfig {
        let resources =
            Some(self.agent_resources.clone()).filter(|r| *r != ResourceRequirements::default());
        crate::inject::mutate::InjectionConfig {
            issuer_url: self.issuer_url.to_string(),
            token_url: self.issuer_url.token_endpoint(),
            agent_image: self.agent_image.clone(),
            agent_image_pull_policy: self.agent_image_pull_policy.clone(),
            agent_resources: resources,
            agent_health_port: self.agent_health_port,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    #[error(transparent)]
    Standalone(#[from] standalone::StandaloneError),
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    #[error("cannot reach the cluster (in-cluster config, KUBECONFIG or ~/.kube/config): {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "refusing plain HTTP on {0}: give --tls-cert/--tls-key, listen on a loopback address, or pass --allow-plain-http"
    )]
    PlainHttp(SocketAddr),
    #[error(
        "--idle-timeout must be longer than --request-timeout (a request in progress is not idle)"
    )]
    IdleTimeout,
}

/// Serves until a server fails or the process is stopped.
pub async fn serve(args: ServeArgs) -> Result<(), RunError> {
    if args.tls_cert.is_none() && !args.listen.ip().is_loopback() && !args.allow_plain_http {
        return Err(RunError::PlainHttp(args.listen));
    }
    if args.idle_timeout <= args.request_timeout {
        return Err(RunError::IdleTimeout);
    }
    let store = Arc::new(Store::with_client_limits(
        &args.signing_key,
        args.client_limits(),
    ));
    let metrics = Arc::new(Metrics::new());
    let mut app = App::new(store.clone(), metrics.clone(), &args.settings())?;
    // The pod webhook, in cluster mode only (it needs the OAuthClient watch).
    let mut webhook = None;

    if let (Some(manifests_dir), Some(secrets_file)) = (&args.manifests, &args.secrets) {
        let (manifests, _secrets) = standalone::load_into(&store, manifests_dir, secrets_file)?;
        store.replace_resources(&manifests.resources);
        let rings = standalone::start_rings(
            &store,
            &manifests.signing_keys,
            &args.signing_key,
            args.state_dir.as_deref(),
        )
        .await?;
        for ring in rings {
            tokio::spawn(standalone::rotate_forever(
                store.clone(),
                ring,
                args.state_dir.clone(),
            ));
        }
        metrics.apiserver_connected.set(1);
        store.mark_synced();
        tracing::info!(
            clients = store.client_count(),
            manifests = %manifests_dir.display(),
            "standalone mode"
        );
    } else {
        let client = kube::Client::try_default().await?;
        let federation = Arc::new(crate::federation::Federation::new(
            Box::new(crate::federation::ApiServerKeys(client.clone())),
            args.service_account_token_review
                .then(|| -> Box<dyn crate::federation::Reviewer> {
                    Box::new(crate::federation::ApiServerReviewer(client.clone()))
                }),
            metrics.federation.clone(),
        ));
        // Learn the service-account issuer now rather than on the first
        // federated request.
        tokio::spawn({
            let federation = federation.clone();
            async move {
                if federation.keys(None).await.is_none() {
                    tracing::warn!(
                        "federated_jwt clients cannot authenticate until the cluster's service-account issuer keys can be read"
                    );
                }
            }
        });
        app.enable_federation(federation);
        let directory = Arc::new(ClientDirectory::default());
        webhook = Some(admission::router(Arc::new(AdmissionState {
            directory: directory.clone(),
            config: args.injection_config(),
            metrics: metrics.clone(),
        })));
        tokio::spawn(crate::source::cluster::run(
            client,
            args.namespace.clone(),
            store.clone(),
            metrics.clone(),
            directory,
        ));
    }

    let app = Arc::new(app);
    state::spawn_housekeeping(app.clone());
    let limits = args.limits();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(serve::Tls::load(cert.clone(), key.clone())?),
        _ => None,
    };
    // Bind everything first, so a taken port fails the start.
    let health_listener = serve::bind(args.health_listen).await?;
    let api_listener = serve::bind(args.listen).await?;
    let webhook = match (webhook, args.webhook_listen.0, &tls) {
        (Some(router), Some(addr), Some(tls)) => {
            Some((serve::bind(addr).await?, router, tls.clone()))
        }
        (Some(_), Some(addr), None) => {
            tracing::warn!(%addr, "no --tls-cert/--tls-key: the pod webhook is off (the API server calls webhooks over HTTPS only)");
            None
        }
        _ => None,
    };
    let health = serve::serve(
        health_listener,
        http::health_router(app.clone()),
        None,
        limits,
        metrics.connection_metrics("health"),
    );
    let api = serve::serve(
        api_listener,
        http::api_router(app.clone()),
        tls,
        limits,
        metrics.connection_metrics("api"),
    );
    let webhook = async {
        match webhook {
            Some((listener, router, tls)) => {
                serve::serve(
                    listener,
                    router,
                    Some(tls),
                    limits,
                    metrics.connection_metrics("webhook"),
                )
                .await
            }
            None => std::future::pending().await,
        }
    };
    let servers = async {
        tokio::select! {
            result = health => result,
            result = api => result,
            result = webhook => result,
        }
    };
    // The servers keep running while the drain delay passes.
    tokio::select! {
        result = servers => result?,
        () = drain_on_signal(&app, args.shutdown_delay) => {}
    }
    Ok(())
}

/// Waits for SIGTERM/SIGINT, then fails /readyz for `delay` while still
/// serving, then returns (and the process exits).
async fn drain_on_signal(app: &App, delay: std::time::Duration) {
    sigil_crds::shutdown::shutdown_signal().await;
    app.start_draining();
    tracing::info!(
        delay_secs = delay.as_secs_f64(),
        "stop signal: not ready any more, serving until the delay ends"
    );
    tokio::time::sleep(delay).await;
}

#[cfg(test)]
mod log_flag_tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};
    use sigil_crds::logging::LogFormat;

    /// How `main` reads it: from the matches of the server or a subcommand.
    fn log_format(args: &[&str]) -> Result<LogFormat, clap::Error> {
        let matches = Cli::command().try_get_matches_from(args)?;
        Ok(LogArgs::from_arg_matches(&matches)?.log_format)
    }

    #[test]
    fn the_log_format_flag_serves_the_server_and_the_subcommands() {
        let serve = ["issuer", "--issuer-url", "https://sigil.example"];
        assert_eq!(log_format(&serve).unwrap(), LogFormat::Text);
        let json = [&serve[..], &["--log-format", "json"]].concat();
        assert_eq!(log_format(&json).unwrap(), LogFormat::Json);
        let token = [
            "issuer",
            "token",
            "--credentials-dir",
            "/x",
            "--log-format",
            "json",
        ];
        assert_eq!(log_format(&token).unwrap(), LogFormat::Json);
        assert!(log_format(&[&serve[..], &["--log-format", "xml"]].concat()).is_err());
    }
}
