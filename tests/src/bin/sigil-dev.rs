//! `sigil-dev`: runs the whole of Sigil locally, for trying it out.
//!
//! Starts a single-node cluster on this machine (the same one the pod tests
//! use: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
//! containerd, kubelet, kube-proxy, CoreDNS), imports the images
//! `hack/images.sh` built, installs Sigil with `helm install`, and runs the
//! example: the Calendar Service and the Task Service as Deployments, the
//! Task Service calling the Calendar Service with the token its injected
//! sidecar keeps fresh. It prints the 200 the Task Service got, runs `helm
//! test`, then stays in the foreground until Ctrl-C (or SIGTERM) and stops
//! everything.
//!
//! `--soak` instead runs the operator and issuer as local processes against
//! an API-server-only control plane and loads them (see `soak`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use clap::Parser;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use sigil_crds::OAuthClient;
use sigil_tests::cluster::{ControlPlane, Options, workspace_root};
use sigil_tests::install;
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
    /// Image archives to import (default: run hack/images.sh).
    #[arg(long, env = "SIGIL_IMAGES_DIR")]
    images_dir: Option<PathBuf>,
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
    if args.soak.is_none() {
        return run_pods(&args, dir).await;
    }

    step(
        1,
        "starting etcd, kube-apiserver and kube-controller-manager",
    );
    let control_plane = ControlPlane::start(Options {
        dir: Some(dir.clone()),
        api_port: Some(args.api_port),
        ..Options::default()
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

const POD_STEPS: u32 = 6;

fn pod_step(n: u32, what: &str) {
    println!("[{n}/{POD_STEPS}] {what}");
}

/// The default: Sigil and the example as pods on a local node.
async fn run_pods(args: &Args, dir: PathBuf) -> anyhow::Result<()> {
    pod_step(1, "image archives (hack/images.sh)");
    if let Some(images) = &args.images_dir {
        // SAFETY: single-threaded here, before anything reads the variable.
        unsafe { std::env::set_var("SIGIL_IMAGES_DIR", images) };
    }
    let images = install::image_archives()?;
    pod_step(
        2,
        "starting the cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy, CoreDNS",
    );
    let started = Instant::now();
    let cp = ControlPlane::start(Options {
        dir: Some(dir.clone()),
        api_port: Some(args.api_port),
        node: true,
        images,
    })
    .await?;
    println!(
        "      node Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let outcome = demo_in_pods(&cp).await;
    match outcome {
        Ok(()) => {
            println!();
            println!("Sigil is running in pods. In another terminal:");
            println!("  export KUBECONFIG={}", cp.kubeconfig().display());
            println!("  alias kubectl={}", cp.kubectl().display());
            println!("  kubectl get pods -A; kubectl get oauthclients,signingkeys -A");
            println!("  kubectl logs -n tasks deploy/task-service -c app -f");
            println!(
                "Logs: {}. Press Ctrl-C to stop.",
                dir.join("logs").display()
            );
            if !args.exit {
                wait_for_shutdown().await;
            }
            println!("stopping...");
            cp.stop();
            Ok(())
        }
        Err(e) => {
            cp.stop();
            Err(e.context(format!(
                "logs are in {} (pods: {}/pod-logs)",
                dir.join("logs").display(),
                sigil_tests::node::node_dir().display()
            )))
        }
    }
}

async fn demo_in_pods(cp: &ControlPlane) -> anyhow::Result<()> {
    pod_step(
        3,
        "helm install sigil charts/sigil (operator and issuer pods, webhook, default SigningKey)",
    );
    let started = Instant::now();
    install::helm_install(cp, &[])?;
    println!(
        "      installed and available in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    pod_step(
        4,
        "applying examples/calendar-service.yaml, file-service.yaml, task-service.yaml and calendar-reader.yaml in namespace tasks",
    );
    let out = cp.run_kubectl(&["create", "namespace", EXAMPLE_NAMESPACE])?;
    if !out.status.success() {
        bail!(
            "creating namespace {EXAMPLE_NAMESPACE}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    install::publish_ca(cp, EXAMPLE_NAMESPACE).await?;
    let manifests = install::example_manifests(EXAMPLE_NAMESPACE, cp.dir())?;
    install::kubectl_apply(cp, EXAMPLE_NAMESPACE, &manifests)?;

    pod_step(
        5,
        "waiting for the Task Service pod to call the Calendar Service pod with its token",
    );
    let log = install::wait_for_log(
        cp,
        EXAMPLE_NAMESPACE,
        "app=task-service",
        "app",
        Duration::from_secs(180),
        |log| log.contains(" 200 "),
    )
    .await?;
    for line in log.lines().filter(|l| !l.trim().is_empty()).take(4) {
        println!("      task-service: {}", line.trim());
    }
    // The secretless client: its ServiceAccount token, no Secret.
    let log = install::wait_for_log(
        cp,
        EXAMPLE_NAMESPACE,
        "app=calendar-reader",
        "app",
        Duration::from_secs(180),
        |log| log.contains(" 200 "),
    )
    .await?;
    for line in log.lines().filter(|l| !l.trim().is_empty()).take(2) {
        println!("      calendar-reader (secretless): {}", line.trim());
    }

    pod_step(6, "helm test sigil");
    let text = install::helm_test(cp)?;
    // `--logs` repeats the pod's log once per test hook.
    let mut shown = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| l.contains("got a token")) {
        if shown.insert(line.trim()) {
            println!("      {}", line.trim());
        }
    }
    Ok(())
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
