//! `sigil-dev`: runs the whole of Sigil locally, for trying it out.
//!
//! Starts a real control plane (etcd, kube-apiserver, kube-controller-manager
//! — the same ones the tests use), installs the CRDs, runs the operator and
//! the issuer as local processes against it, applies the Task Service
//! example, fetches a token with the credentials the operator wrote, and
//! calls the example Calendar Service with it. Then it stays in the
//! foreground until Ctrl-C and stops everything.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use clap::Parser;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use sigil_crds::OAuthClient;
use sigil_tests::cluster::{ControlPlane, Options, workspace_root};
use sigil_tests::processes::{Process, free_addr};

#[derive(Parser, Debug)]
#[command(about = "Run Sigil locally: control plane, operator, issuer and the examples")]
struct Args {
    /// Directory for the control plane's data, certificates, logs and
    /// kubeconfig (wiped at start).
    #[arg(long, env = "SIGIL_DEV_DIR")]
    dir: Option<PathBuf>,
    /// API server port.
    #[arg(long, env = "SIGIL_DEV_API_PORT", default_value_t = 16443)]
    api_port: u16,
    /// Issuer port (plain HTTP on loopback): the issuer URL is
    /// http://127.0.0.1:PORT.
    #[arg(long, env = "SIGIL_DEV_ISSUER_PORT", default_value_t = 18443)]
    issuer_port: u16,
    /// Calendar Service (example resource server) port.
    #[arg(long, env = "SIGIL_DEV_CALENDAR_PORT", default_value_t = 18090)]
    calendar_port: u16,
    /// Stop after the demo instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
    /// After the demo, soak the issuer for this long (Go duration, e.g.
    /// 10m): steady token load, a forced key rotation every minute, a client
    /// secret rotation every two minutes, every token verified, RSS
    /// sampled; then stop. Fails on any failed request or verification.
    #[arg(long, value_parser = parse_soak_duration)]
    soak: Option<Duration>,
    /// Token requests per second during the soak.
    #[arg(long, default_value_t = 200)]
    soak_rate: u32,
}

fn parse_soak_duration(value: &str) -> Result<Duration, String> {
    sigil_crds::parse_duration(value).map_err(|e| e.to_string())
}

const STEPS: u32 = 8;
const SIGIL_NAMESPACE: &str = "sigil-system";
const EXAMPLE_NAMESPACE: &str = "tasks";

fn step(n: u32, what: &str) {
    println!("[{n}/{STEPS}] {what}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = match args.dir.clone() {
        Some(dir) => dir,
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("HOME is not set; pass --dir")?
            .join(".cache/sigil/dev"),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("wiping {}", dir.display()))?;
    }
    let logs = dir.join("logs");

    step(
        1,
        "starting etcd, kube-apiserver and kube-controller-manager",
    );
    let control_plane = ControlPlane::start(Options {
        dir: Some(dir.clone()),
        api_port: Some(args.api_port),
    })
    .await?;
    let result = run(&args, &control_plane, &logs).await;
    match result {
        Ok(mut processes) => {
            let mut outcome = Ok(());
            if let Some(duration) = args.soak {
                outcome = soak(&args, &control_plane, &processes, duration).await;
            } else if !args.exit {
                wait_for_shutdown().await;
            }
            println!("stopping...");
            for p in processes.iter_mut().rev() {
                p.stop().await;
            }
            control_plane.stop();
            outcome
        }
        Err(e) => {
            control_plane.stop();
            Err(e.context(format!("logs are in {}", logs.display())))
        }
    }
}

async fn run(args: &Args, cp: &ControlPlane, logs: &Path) -> anyhow::Result<Vec<Process>> {
    let kubeconfig = cp.kubeconfig().display().to_string();
    let kubectl = |argv: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(cp.kubectl())
            .args(argv)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!("kubectl {argv:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    step(2, "installing the OAuthClient and SigningKey CRDs");
    cp.install_crds().await?;

    step(
        3,
        "creating namespace sigil-system and the default SigningKey (ES256)",
    );
    kubectl(&["create", "namespace", SIGIL_NAMESPACE])?;
    let signing_key = dir_file(cp.dir(), "signing-key.yaml", SIGNING_KEY)?;
    kubectl(&["apply", "-n", SIGIL_NAMESPACE, "-f", &signing_key])?;

    let issuer_url = format!("http://127.0.0.1:{}", args.issuer_port);
    let env = [
        ("KUBECONFIG", kubeconfig.clone()),
        ("RUST_LOG", "info".to_owned()),
    ];

    step(4, "starting the operator");
    let operator_health = free_addr()?;
    let mut operator = Process::spawn(
        "operator",
        &sigil_tests::binary("operator"),
        &[
            format!("--issuer-url={issuer_url}"),
            format!("--namespace={SIGIL_NAMESPACE}"),
            format!("--health-listen={operator_health}"),
        ],
        &env,
        &logs.join("operator.log"),
    )?;
    operator
        .wait_http_ok(operator_health, "/healthz", Duration::from_secs(30))
        .await?;

    step(5, &format!("starting the issuer at {issuer_url}"));
    let issuer_health = free_addr()?;
    let mut issuer = Process::spawn(
        "issuer",
        &sigil_tests::binary("issuer"),
        &[
            format!("--issuer-url={issuer_url}"),
            format!("--listen=127.0.0.1:{}", args.issuer_port),
            format!("--health-listen={issuer_health}"),
            format!("--namespace={SIGIL_NAMESPACE}"),
        ],
        &env,
        &logs.join("issuer.log"),
    )?;
    // Ready once its caches are synced and the operator has made a key.
    issuer
        .wait_http_ok(issuer_health, "/readyz", Duration::from_secs(60))
        .await?;

    step(6, "applying examples/task-service.yaml in namespace tasks");
    kubectl(&["create", "namespace", EXAMPLE_NAMESPACE])?;
    let example = workspace_root().join("examples/task-service.yaml");
    kubectl(&[
        "apply",
        "-n",
        EXAMPLE_NAMESPACE,
        "-f",
        &example.display().to_string(),
    ])?;

    step(
        7,
        "waiting for the operator to write the Task Service's credentials",
    );
    let client = cp.client().await?;
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), EXAMPLE_NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        operator.check_running()?;
        let ready = clients
            .get_opt("task-service")
            .await?
            .and_then(|c| c.status)
            .map(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == sigil_crds::CONDITION_READY && c.status == "True")
            })
            .unwrap_or(false);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("OAuthClient tasks/task-service not Ready after 30s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secrets: Api<Secret> = Api::namespaced(client, EXAMPLE_NAMESPACE);
    let secret = secrets.get("task-service-oauth").await?;
    let data = secret.data.unwrap_or_default();
    let field = |key: &str| -> anyhow::Result<String> {
        let bytes = data
            .get(key)
            .with_context(|| format!("Secret has no {key}"))?;
        Ok(String::from_utf8_lossy(&bytes.0).into_owned())
    };
    let (client_id, client_secret, token_url) = (
        field(sigil_crds::secret_keys::CLIENT_ID)?,
        field(sigil_crds::secret_keys::CLIENT_SECRET)?,
        field(sigil_crds::secret_keys::TOKEN_URL)?,
    );
    println!("      Secret tasks/task-service-oauth: client_id={client_id} token_url={token_url}");

    step(
        8,
        "getting a token and calling the example Calendar Service",
    );
    let calendar_addr = format!("127.0.0.1:{}", args.calendar_port);
    let mut calendar = Process::spawn(
        "calendar-service",
        &sigil_tests::binary("calendar-service"),
        &[
            format!("--listen={calendar_addr}"),
            format!("--issuer-url={issuer_url}"),
            "--audience=event".to_owned(),
        ],
        &[],
        &logs.join("calendar-service.log"),
    )?;
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(&token_url)
        .basic_auth(&client_id, Some(&client_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "event.view"),
            ("audience", "event"),
        ])
        .send()
        .await?
        .error_for_status()
        .context("token request")?
        .json()
        .await?;
    let access_token = token["access_token"]
        .as_str()
        .context("no access_token in the token response")?
        .to_owned();
    let claims = access_token
        .split('.')
        .nth(1)
        .and_then(|c| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
        })
        .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
        .context("token is not a JWT")?;
    println!("      POST {token_url} (client_secret_basic, scope=event.view, audience=event)");
    println!("      access_token: {access_token}");
    println!("      claims: {claims}");

    let calendar_url = format!("http://{calendar_addr}/events");
    calendar
        .wait_http_status(&calendar_url, Duration::from_secs(20))
        .await?;
    let response = http
        .get(&calendar_url)
        .bearer_auth(&access_token)
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    println!("      GET {calendar_url} with the token -> {status} {body}");
    if !status.is_success() {
        bail!("the Calendar Service refused the token: {status} {body}");
    }

    println!();
    println!("Sigil is running locally. In another terminal:");
    println!("  export KUBECONFIG={kubeconfig}");
    println!("  alias kubectl={}", cp.kubectl().display());
    println!("  kubectl get oauthclients,signingkeys -A");
    println!("  curl -s {issuer_url}/.well-known/jwks.json");
    println!("Logs: {}. Press Ctrl-C to stop.", logs.display());
    Ok(vec![operator, issuer, calendar])
}

/// `--soak`: load the issuer started by [`run`] (the second process).
async fn soak(
    args: &Args,
    cp: &ControlPlane,
    processes: &[Process],
    duration: Duration,
) -> anyhow::Result<()> {
    let issuer_pid = processes
        .get(1)
        .and_then(Process::pid)
        .context("the issuer is not running")?;
    println!();
    println!(
        "soaking the issuer for {} s at {} requests/s",
        duration.as_secs(),
        args.soak_rate
    );
    sigil_tests::soak::run(sigil_tests::soak::Soak {
        client: cp.client().await?,
        issuer_url: format!("http://127.0.0.1:{}", args.issuer_port),
        issuer_pid,
        namespace: EXAMPLE_NAMESPACE.to_owned(),
        name: "task-service".to_owned(),
        audience: "event".to_owned(),
        key_namespace: SIGIL_NAMESPACE.to_owned(),
        key_name: "default".to_owned(),
        duration,
        rate: args.soak_rate,
        workers: 4,
    })
    .await
}

const SIGNING_KEY: &str = "apiVersion: sigil.dev/v1alpha1
kind: SigningKey
metadata:
  name: default
spec:
  algorithm: ES256
";

fn dir_file(dir: &Path, name: &str, contents: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
}

async fn wait_for_shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
