//! `sigil-bench attack`: can hostile traffic make the issuer refuse an
//! honest client, or grow past its memory limit?
//!
//! Starts the release `issuer` binary in standalone mode as a child process
//! (TLS with a throwaway certificate unless `--plain`, loopback) with one
//! honest `client_secret` client and `--jwt-clients` `private_key_jwt`
//! clients, then runs the phases one after the other, each for `--seconds`:
//!
//! 1. `jti`: valid assertions with 256-byte `jti`s (the longest accepted)
//!    as fast as `--flood-connections` connections get answers, one client
//!    after the other as each one's share of the replay cache fills; every
//!    32nd request carries a 257-byte `jti` and every 32nd replays an
//!    accepted assertion (both must be refused). Afterwards no client may
//!    have more assertions accepted than its share, nor all together more
//!    than the total, and the issuer's `sigil_issuer_remembered_assertions`
//!    must be within the total.
//! 2. `secrets`: wrong secrets for the honest client's id and random ids
//!    (Basic and `client_secret_post`), from up to 65,536 loopback source
//!    addresses (127.1.x.y, a new one every 64 requests) and one in eight
//!    connections from the honest client's own address, which so goes over
//!    its failure budget.
//! 3. `connections`: twice `--max-connections` connections held open from
//!    `--flood-sources` addresses (127.2.x.y): silent TCP, idle TLS after the
//!    handshake, slowloris headers and slow 64 KiB bodies (a byte a second), each
//!    reopened as soon as the issuer closes it (after 1 s if it was closed
//!    within 1 s: refused at the limit, or closed to make room).
//! 4. `big`: oversized requests, each on a fresh connection (each of the
//!    flood's connections sends one kind): a 1 MiB and an 8 MiB chunked
//!    body, a 1 MiB header, 1,000 headers, a 48 KiB Authorization, a 60 KiB
//!    client_secret, a 10 GiB Content-Length, and signed assertions with a
//!    40 KiB claim.
//!
//! Throughout each phase an honest client (source 127.0.0.1) asks for a
//! token with the right secret `--honest-rate` times a second, each time on
//! a fresh connection, without retrying: a refused connection, an error or
//! no answer within `--honest-timeout` is a failure. The issuer's VmRSS is
//! read from /proc every 250 ms, and the lines it logs are counted. Honest client and sampler run on their own
//! thread and runtime, so the attack's load on this process does not delay
//! them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use sigil_core::keys::ParsedKey;
use sigil_issuer::http::client_auth::{MAX_JTI_BYTES, ReplayLimits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::timing::{Rng, assertion_body, es256, signed_jwt};

#[derive(clap::Args, Debug)]
pub struct AttackArgs {
    /// Seconds each phase lasts.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// The issuer's resident memory (VmRSS) must stay under this many MiB;
    /// the default is the chart's memory limit for the issuer.
    #[arg(long, default_value_t = 256)]
    rss_bound_mib: u64,
    /// The issuer binary; default: `issuer` next to this binary.
    #[arg(long)]
    issuer: Option<PathBuf>,
    /// Serve plain HTTP instead of TLS.
    #[arg(long)]
    plain: bool,
    /// The issuer's --max-connections; the connection flood holds twice as
    /// many.
    #[arg(long, default_value_t = sigil_issuer::http::serve::Limits::default().max_connections)]
    max_connections: usize,
    /// The issuer's --max-connections-per-source.
    #[arg(long, default_value_t = sigil_issuer::http::serve::Limits::default().max_connections_per_source)]
    max_connections_per_source: usize,
    /// The issuer's --max-remembered-assertions.
    #[arg(long, default_value_t = ReplayLimits::default().total)]
    max_remembered_assertions: usize,
    /// The issuer's --max-remembered-assertions-per-client.
    #[arg(long, default_value_t = ReplayLimits::default().per_client)]
    max_remembered_assertions_per_client: usize,
    /// private_key_jwt clients of the jti flood.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    jwt_clients: u64,
    /// Connections each request flood (jti, secrets, big) keeps busy.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    flood_connections: u64,
    /// Source addresses of the connection flood (127.2.x.y).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65_000))]
    flood_sources: u64,
    /// Honest token requests per second, each on a fresh connection.
    #[arg(long, default_value_t = 20.0)]
    honest_rate: f64,
    /// Seconds an honest request may take (the agent's request timeout).
    #[arg(long, default_value_t = 10.0)]
    honest_timeout: f64,
    /// Phases to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "jti,secrets,connections,big"
    )]
    phases: Vec<Phase>,
    /// More flags for the issuer (after `--`).
    #[arg(last = true)]
    issuer_args: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Valid assertions with the longest jtis.
    Jti,
    /// Wrong secrets from many addresses.
    Secrets,
    /// Held, slow and refused connections.
    Connections,
    /// Oversized bodies, headers and claims.
    Big,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Jti => "jti flood",
            Phase::Secrets => "wrong-secret flood",
            Phase::Connections => "connection flood",
            Phase::Big => "oversized requests",
        }
    }
}

const TOKEN_PATH: &str = "/oauth2/token";
const HONEST_ID: &str = "honest.attack";
const HONEST_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// The jti and big-request floods.
const ATTACKER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A connection the issuer closes sooner than this was refused at accept
/// or closed to make room for another.
const REFUSED_WITHIN: Duration = Duration::from_secs(1);

fn jwt_client_id(index: usize) -> String {
    format!("jwt-{index}.attack")
}

// ------------------------------------------------------------ connections

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The issuer's API port, over TLS or not.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Target {
    /// A TCP connection, with the TLS handshake done when the issuer
    /// serves TLS.
    async fn stream(&self, source: IpAddr) -> anyhow::Result<Box<dyn Stream>> {
        let tcp = crate::tcp_connect(self.addr, Some(source))
            .await
            .context("connect")?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake")?;
                Ok(Box::new(tls))
            }
        }
    }

    async fn http(
        &self,
        source: IpAddr,
    ) -> anyhow::Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>> {
        crate::http1(self.stream(source).await?).await
    }
}

/// A throwaway certificate for `localhost` (PEM files for the issuer) and
/// a connector that trusts only it.
fn tls_files(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, tokio_rustls::TlsConnector)> {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, key.cert.pem())?;
    std::fs::write(&key_path, key.signing_key.serialize_pem())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(key.cert.der().clone())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((
        cert_path,
        key_path,
        tokio_rustls::TlsConnector::from(Arc::new(config)),
    ))
}

/// What a raw request got.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    Status(u16),
    /// Closed (or reset) before a status line.
    Closed,
    /// Still open when the phase ended.
    Open,
    /// Bytes that are no HTTP/1 status line.
    Garbage,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Status(code) => write!(f, "{code}"),
            Answer::Closed => f.write_str("closed"),
            Answer::Open => f.write_str("open at the end"),
            Answer::Garbage => f.write_str("not HTTP"),
        }
    }
}

fn status_line(head: &[u8]) -> Answer {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with(b"HTTP/") => std::str::from_utf8(code)
            .ok()
            .and_then(|code| code.trim().parse().ok())
            .map_or(Answer::Garbage, Answer::Status),
        _ => Answer::Garbage,
    }
}

async fn read_status(reader: &mut (impl AsyncRead + Unpin)) -> Answer {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) if head.is_empty() => return Answer::Closed,
            Ok(0) | Err(_) => return status_line(&head),
            Ok(read) => {
                head.extend_from_slice(&chunk[..read]);
                if head.contains(&b'\n') || head.len() > 4096 {
                    return status_line(&head);
                }
            }
        }
    }
}

/// Writes `parts` (pausing `pause` after each) while waiting for the status
/// line of the answer, until `deadline`.
async fn exchange(
    stream: Box<dyn Stream>,
    parts: impl Iterator<Item = Bytes>,
    pause: Duration,
    deadline: tokio::time::Instant,
) -> Answer {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async {
        for part in parts {
            if writer.write_all(&part).await.is_err() {
                break;
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let _ = writer.flush().await;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        answer = read_status(&mut reader) => answer,
        () = write => Answer::Open,
        () = tokio::time::sleep_until(deadline) => Answer::Open,
    }
}

fn head(lines: &[&str]) -> Bytes {
    let mut text = format!("POST {TOKEN_PATH} HTTP/1.1\r\nhost: localhost\r\n");
    for line in lines {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    Bytes::from(text)
}

// ------------------------------------------------------------ the issuer

/// The issuer child process; killed when dropped.
struct Issuer {
    child: Child,
    api: SocketAddr,
    health: SocketAddr,
    url: String,
    log: PathBuf,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Issuer {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Lines the issuer has logged so far.
    fn log_lines(&self) -> u64 {
        std::fs::read(&self.log)
            .map(|text| text.iter().filter(|&&b| b == b'\n').count() as u64)
            .unwrap_or(0)
    }

    /// A connection counter of the API listener
    /// (`sigil_issuer_connections_{name}_total`).
    async fn api_connections(&self, name: &str) -> anyhow::Result<f64> {
        self.metric(&format!(
            "sigil_issuer_connections_{name}_total{{listener=\"api\""
        ))
        .await
    }

    /// A value of the issuer's /metrics (the first sample whose name and
    /// labels start with `name`).
    async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let mut sender = crate::connect(self.health).await?;
        let (status, body) = crate::get(&mut sender, "/metrics").await?;
        ensure!(status.is_success(), "/metrics answered {status}");
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .filter(|line| line.starts_with(name))
            .find_map(|line| line.rsplit(' ').next()?.parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The clients: the honest one (its secret) and the private_key_jwt ones
/// (all with `key`'s public half).
fn write_manifests(
    dir: &Path,
    args: &AttackArgs,
    key: &ParsedKey,
    kid: &str,
    secret: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let mut public = key.public_jwk(kid);
    public
        .as_object_mut()
        .context("a JWK object")?
        .remove("use");
    let mut yaml = String::from(
        "apiVersion: sigil.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: default, namespace: sigil-system}\nspec: {algorithm: ES256}\n---\napiVersion: sigil.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: honest, namespace: attack}\nspec: {scopes: [a], audiences: [x]}\n",
    );
    for index in 0..args.jwt_clients {
        write!(
            yaml,
            "---\napiVersion: sigil.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: jwt-{index}, namespace: attack}}\nspec: {{scopes: [a], audiences: [x], authMethods: [private_key_jwt], jwks: {{\"keys\": [{public}]}}}}\n"
        )?;
    }
    std::fs::write(manifests.join("clients.yaml"), yaml)?;
    let secrets = dir.join("secrets.json");
    std::fs::write(
        &secrets,
        serde_json::json!({ HONEST_ID: secret }).to_string(),
    )?;
    Ok((manifests, secrets))
}

fn start_issuer(
    args: &AttackArgs,
    dir: &Path,
    manifests: &Path,
    secrets: &Path,
) -> anyhow::Result<(Issuer, Option<tokio_rustls::TlsConnector>)> {
    let binary = match &args.issuer {
        Some(binary) => binary.clone(),
        None => std::env::current_exe()?.with_file_name("issuer"),
    };
    ensure!(
        binary.exists(),
        "no issuer binary at {} (cargo build --release -p sigil-issuer, or --issuer)",
        binary.display()
    );
    let (api, health) = (free_port()?, free_port()?);
    let scheme = if args.plain { "http" } else { "https" };
    let url = format!("{scheme}://localhost:{}", api.port());
    let log = dir.join("issuer.log");
    let mut command = std::process::Command::new(&binary);
    command
        .arg("--manifests")
        .arg(manifests)
        .arg("--secrets")
        .arg(secrets)
        .args(["--listen", &api.to_string()])
        .args(["--health-listen", &health.to_string()])
        .args(["--issuer-url", &url])
        .args(["--max-connections", &args.max_connections.to_string()])
        .args([
            "--max-connections-per-source",
            &args.max_connections_per_source.to_string(),
        ])
        .args([
            "--max-remembered-assertions",
            &args.max_remembered_assertions.to_string(),
        ])
        .args([
            "--max-remembered-assertions-per-client",
            &args.max_remembered_assertions_per_client.to_string(),
        ])
        .args(&args.issuer_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let mut tls = None;
    if !args.plain {
        let (cert, key, connector) = tls_files(dir)?;
        command
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key);
        tls = Some(connector);
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    Ok((
        Issuer {
            child,
            api,
            health,
            url,
            log,
        },
        tls,
    ))
}

async fn wait_ready(issuer: &mut Issuer) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = issuer.child.try_wait()? {
            bail!("the issuer exited ({status}):\n{}", issuer.log_tail());
        }
        if let Ok(mut sender) = crate::connect(issuer.health).await
            && let Ok((status, _)) = crate::get(&mut sender, "/readyz").await
            && status.is_success()
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the issuer is not ready after 30 s:\n{}", issuer.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------ measuring

/// Counts by label, merged across tasks.
#[derive(Default, Debug)]
struct Tally(BTreeMap<String, u64>);

impl Tally {
    fn add(&mut self, label: impl Into<String>, count: u64) {
        *self.0.entry(label.into()).or_default() += count;
    }

    fn merge(&mut self, other: Tally) {
        for (label, count) in other.0 {
            self.add(label, count);
        }
    }

    fn count(&self, label: &str) -> u64 {
        self.0.get(label).copied().unwrap_or(0)
    }

    fn show(&self) -> String {
        self.0
            .iter()
            .map(|(label, count)| format!("{label} ×{count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What an attack did: how much, what it saw, what must not have happened.
#[derive(Default)]
struct Outcome {
    made: u64,
    unit: &'static str,
    notes: Vec<String>,
    violations: Vec<String>,
}

#[derive(Default)]
struct Honest {
    attempts: u64,
    successes: u64,
    failures: Tally,
}

struct Monitor {
    honest: Honest,
    rss_kib: Vec<u64>,
}

/// The honest client: `rate` token requests a second until `deadline`,
/// each on a fresh connection from 127.0.0.1, none retried.
async fn honest_client(
    target: Target,
    authorization: Arc<str>,
    rate: f64,
    timeout: Duration,
    deadline: Instant,
) -> Honest {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut attempts = tokio::task::JoinSet::new();
    loop {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let (target, authorization) = (target.clone(), authorization.clone());
        attempts.spawn(async move {
            let attempt = async {
                let mut sender = target.http(HONEST_SOURCE).await?;
                let body = Bytes::from_static(b"grant_type=client_credentials");
                let (status, _) =
                    crate::timed_form_post(&mut sender, TOKEN_PATH, Some(&authorization), &body)
                        .await
                        .context("request")?;
                ensure!(status.is_success(), "answered {status}");
                Ok(())
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(format!("{error:#}")),
                Err(_) => Some(format!("no answer within {} s", timeout.as_secs_f64())),
            }
        });
    }
    let mut honest = Honest::default();
    while let Some(result) = attempts.join_next().await {
        honest.attempts += 1;
        match result {
            Ok(None) => honest.successes += 1,
            Ok(Some(failure)) => honest.failures.add(failure, 1),
            Err(error) => honest.failures.add(format!("task: {error}"), 1),
        }
    }
    honest
}

/// The honest client and the RSS sampler on their own thread and runtime.
fn monitor(
    target: Target,
    authorization: Arc<str>,
    args: &AttackArgs,
    pid: u32,
    deadline: Instant,
) -> std::thread::JoinHandle<anyhow::Result<Monitor>> {
    let (rate, timeout) = (
        args.honest_rate,
        Duration::from_secs_f64(args.honest_timeout),
    );
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let done = Arc::new(tokio::sync::Notify::new());
            let sampler = tokio::spawn({
                let done = done.clone();
                async move {
                    let mut samples = Vec::new();
                    let mut tick = tokio::time::interval(Duration::from_millis(250));
                    loop {
                        tokio::select! {
                            _ = tick.tick() => samples.extend(rss_kib(pid)),
                            () = done.notified() => return samples,
                        }
                    }
                }
            });
            let honest = honest_client(target, authorization, rate, timeout, deadline).await;
            done.notify_one();
            Ok(Monitor {
                honest,
                rss_kib: sampler.await?,
            })
        })
    })
}

// ------------------------------------------------------------ the phases

struct Attack {
    args: AttackArgs,
    target: Target,
    issuer: Issuer,
    key: ParsedKey,
    kid: String,
    /// Distinct across the run: jtis are `{run}-{counter}` padded.
    run: u64,
    counter: AtomicU64,
}

impl Attack {
    fn next_jti(&self, bytes: usize) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let jti = format!("{:016x}-{n:016x}-", self.run);
        format!("{jti:j<bytes$}")
    }

    /// A valid assertion of client `index`, with a `jti` of `jti_bytes`
    /// and, if given, a `pad` claim of that many bytes.
    fn assertion(&self, index: usize, jti_bytes: usize, pad: usize) -> anyhow::Result<Bytes> {
        let id = jwt_client_id(index);
        let now = sigil_issuer::http::token::unix_now();
        let mut claims = serde_json::json!({
            "iss": id, "sub": id, "aud": self.issuer.url,
            "exp": now + 3000, "iat": now, "jti": self.next_jti(jti_bytes),
        });
        if pad > 0 {
            claims["pad"] = serde_json::Value::String("p".repeat(pad));
        }
        Ok(assertion_body(&signed_jwt(&self.key, &self.kid, &claims)?))
    }
}

/// Phase 1. Shared between the flood's connections: the client whose share
/// is being filled, and what each client got accepted.
async fn jti_flood(attack: Arc<Attack>, deadline: Instant) -> anyhow::Result<Outcome> {
    let clients = attack.args.jwt_clients as usize;
    let current = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..attack.args.flood_connections {
        let (attack, current, accepted) = (attack.clone(), current.clone(), accepted.clone());
        workers.spawn(async move {
            let mut tally = Tally::default();
            let mut sender = attack.target.http(ATTACKER_SOURCE).await?;
            let mut last_accepted: Option<Bytes> = None;
            let mut sent = 0u64;
            while Instant::now() < deadline {
                sent += 1;
                let index = current.load(Ordering::Relaxed).min(clients - 1);
                let (kind, body) = match (sent % 32, &last_accepted) {
                    (0, _) => (
                        "257-byte jti",
                        attack.assertion(index, MAX_JTI_BYTES + 1, 0)?,
                    ),
                    (1, Some(replay)) => ("replay", replay.clone()),
                    _ => ("256-byte jti", attack.assertion(index, MAX_JTI_BYTES, 0)?),
                };
                let status =
                    match crate::timed_form_post(&mut sender, TOKEN_PATH, None, &body).await {
                        Ok((status, _)) => status.as_u16(),
                        Err(_) => {
                            tally.add("connection lost", 1);
                            sender = attack.target.http(ATTACKER_SOURCE).await?;
                            continue;
                        }
                    };
                tally.add(format!("{kind}: {status}"), 1);
                if kind == "256-byte jti" {
                    if status == 200 {
                        accepted[index].fetch_add(1, Ordering::Relaxed);
                        last_accepted = Some(body);
                    } else {
                        // This client's share (or the total) is full: the next one.
                        let _ = current.compare_exchange(
                            index,
                            index + 1,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                }
            }
            Ok::<_, anyhow::Error>(tally)
        });
    }
    let mut tally = Tally::default();
    while let Some(result) = workers.join_next().await {
        tally.merge(result??);
    }
    let limits = &attack.args;
    // The issuer clamps the share to half the total.
    let share = limits
        .max_remembered_assertions_per_client
        .clamp(1, limits.max_remembered_assertions.max(2) / 2) as u64;
    let total = limits.max_remembered_assertions.max(2) as u64;
    let per_client: Vec<u64> = accepted.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let accepted_total: u64 = per_client.iter().sum();
    let full = per_client.iter().filter(|&&n| n == share).count();
    let remembered = attack
        .issuer
        .metric("sigil_issuer_remembered_assertions")
        .await? as u64;
    let mut outcome = Outcome {
        made: tally.0.values().sum(),
        unit: "requests",
        ..Outcome::default()
    };
    outcome.notes.push(format!(
        "{accepted_total} assertions accepted; {full} of {clients} clients reached their share of {share}; the issuer remembers {remembered} (total bound {total})"
    ));
    outcome.notes.push(tally.show());
    for kind in ["257-byte jti", "replay"] {
        let wrongly = tally.count(&format!("{kind}: 200"));
        if wrongly > 0 {
            outcome
                .violations
                .push(format!("{wrongly} assertions with a {kind} got a token"));
        }
    }
    if let Some(over) = per_client.iter().position(|&n| n > share) {
        outcome.violations.push(format!(
            "{} had {} assertions accepted, over its share of {share}",
            jwt_client_id(over),
            per_client[over]
        ));
    }
    if accepted_total > total || remembered > total {
        outcome.violations.push(format!(
            "{accepted_total} accepted / {remembered} remembered, over the total bound {total}"
        ));
    }
    Ok(outcome)
}

/// Phase 2.
async fn secrets_flood(attack: Arc<Attack>, deadline: Instant) -> anyhow::Result<Outcome> {
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..attack.args.flood_connections {
        let attack = attack.clone();
        workers.spawn(async move {
            let mut rng = Rng((attack.run ^ worker.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
            let mut tally = Tally::default();
            let mut sources = 0u64;
            while Instant::now() < deadline {
                let source = if worker % 8 == 0 {
                    HONEST_SOURCE
                } else {
                    let r = rng.next();
                    IpAddr::V4(Ipv4Addr::new(127, 1, (r >> 8) as u8, (r as u8).max(1)))
                };
                sources += 1;
                let Ok(mut sender) = attack.target.http(source).await else {
                    tally.add("connect failed", 1);
                    continue;
                };
                for n in 0..64u64 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let r = rng.next();
                    let id = if n % 2 == 0 {
                        HONEST_ID.to_owned()
                    } else {
                        format!("random-{:x}.attack", r >> 32)
                    };
                    let secret = format!("wrong-{r:016x}-{}", "s".repeat(26));
                    let (authorization, body) = if n % 4 < 2 {
                        (
                            Some(format!(
                                "Basic {}",
                                STANDARD.encode(format!("{id}:{secret}"))
                            )),
                            Bytes::from_static(b"grant_type=client_credentials"),
                        )
                    } else {
                        (
                            None,
                            Bytes::from(format!(
                                "grant_type=client_credentials&client_id={id}&client_secret={secret}"
                            )),
                        )
                    };
                    match crate::timed_form_post(
                        &mut sender,
                        TOKEN_PATH,
                        authorization.as_deref(),
                        &body,
                    )
                    .await
                    {
                        Ok((status, _)) => tally.add(status.as_u16().to_string(), 1),
                        Err(_) => {
                            tally.add("connection lost", 1);
                            break;
                        }
                    }
                }
            }
            Ok::<_, anyhow::Error>((tally, sources))
        });
    }
    let (mut tally, mut sources) = (Tally::default(), 0);
    while let Some(result) = workers.join_next().await {
        let (worker_tally, worker_sources) = result??;
        tally.merge(worker_tally);
        sources += worker_sources;
    }
    let tracked = attack
        .issuer
        .metric("sigil_issuer_failed_auth_tracked_sources")
        .await?;
    let mut outcome = Outcome {
        made: tally.0.values().sum(),
        unit: "requests",
        ..Outcome::default()
    };
    outcome.notes.push(format!(
        "answers: {}; {sources} connections from random 127.1.x.y and 127.0.0.1; {tracked} sources tracked by the issuer at the end",
        tally.show()
    ));
    if tally.count("200") > 0 {
        outcome
            .violations
            .push(format!("{} wrong secrets got a token", tally.count("200")));
    }
    Ok(outcome)
}

#[derive(Clone, Copy, Debug)]
enum Hold {
    /// TCP only: no TLS handshake, no request.
    Silent,
    /// After the handshake (TLS) or nothing (plain), no request.
    Idle,
    /// Headers a line a second, never finished.
    SlowHeaders,
    /// Headers (a 64 KiB body, the largest accepted), then the body a byte
    /// a second.
    SlowBody,
}

impl Hold {
    const ALL: [Hold; 4] = [Hold::Silent, Hold::Idle, Hold::SlowHeaders, Hold::SlowBody];

    fn name(self) -> &'static str {
        match self {
            Hold::Silent => "silent TCP",
            Hold::Idle => "idle after handshake",
            Hold::SlowHeaders => "slowloris headers",
            Hold::SlowBody => "slow body",
        }
    }
}

/// Phase 3: one task per connection held.
async fn connection_flood(attack: Arc<Attack>, deadline: Instant) -> anyhow::Result<Outcome> {
    let until = tokio::time::Instant::from_std(deadline);
    let held = 2 * attack.args.max_connections;
    let sources = attack.args.flood_sources;
    const COUNTERS: [&str; 5] = [
        "refused",
        "refused_per_source",
        "evicted",
        "header_timeout",
        "idle_closed",
    ];
    let mut before = Vec::new();
    for name in COUNTERS {
        before.push(attack.issuer.api_connections(name).await?);
    }
    let mut workers = tokio::task::JoinSet::new();
    for task in 0..held {
        let attack = attack.clone();
        let hold = Hold::ALL[task % Hold::ALL.len()];
        let source_index = task as u64 % sources;
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            2,
            (source_index / 250) as u8,
            (source_index % 250 + 1) as u8,
        ));
        workers.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let opened = Instant::now();
                let stream = match hold {
                    Hold::Silent => crate::tcp_connect(attack.target.addr, Some(source))
                        .await
                        .map(|tcp| Box::new(tcp) as Box<dyn Stream>),
                    _ => attack.target.stream(source).await,
                };
                let answer = match stream {
                    Err(_) if opened.elapsed() < REFUSED_WITHIN => Answer::Closed,
                    Err(_) => {
                        tally.add(format!("{}: refused after ≥ 1 s", hold.name()), 1);
                        continue;
                    }
                    Ok(stream) => match hold {
                        Hold::Silent | Hold::Idle => {
                            exchange(stream, std::iter::empty(), Duration::ZERO, until).await
                        }
                        Hold::SlowHeaders => {
                            let start = Bytes::from_static(
                                b"POST /oauth2/token HTTP/1.1\r\nhost: localhost\r\n",
                            );
                            let line = Bytes::from_static(b"x-slow: 1\r\n");
                            let parts = std::iter::once(start).chain(std::iter::repeat(line));
                            exchange(stream, parts, Duration::from_secs(1), until).await
                        }
                        Hold::SlowBody => {
                            let headers = head(&[
                                "content-type: application/x-www-form-urlencoded",
                                "content-length: 65536",
                            ]);
                            let byte = Bytes::from_static(b"a");
                            let parts = std::iter::once(headers).chain(std::iter::repeat(byte));
                            exchange(stream, parts, Duration::from_secs(1), until).await
                        }
                    },
                };
                tally.add("opened", 1);
                if answer == Answer::Closed && opened.elapsed() < REFUSED_WITHIN {
                    tally.add("closed within 1 s", 1);
                    tokio::time::sleep(REFUSED_WITHIN).await;
                } else {
                    tally.add(
                        format!(
                            "{}: {answer} after {} s",
                            hold.name(),
                            opened.elapsed().as_secs()
                        ),
                        1,
                    );
                }
            }
            tally
        });
    }
    // Mid-phase: how many the issuer holds.
    let half = Duration::from_secs_f64(attack.args.seconds / 2.0);
    tokio::time::sleep(half).await;
    let open_mid = attack
        .issuer
        .metric("sigil_issuer_connections_open{listener=\"api\"")
        .await?;
    let mut tally = Tally::default();
    while let Some(result) = workers.join_next().await {
        tally.merge(result?);
    }
    let mut counted = Vec::new();
    for (name, before) in COUNTERS.into_iter().zip(before) {
        let delta = attack.issuer.api_connections(name).await? - before;
        counted.push(format!("{name} {delta}"));
    }
    let opened = tally.count("opened");
    let closed_at_once = tally.count("closed within 1 s");
    tally.0.remove("opened");
    tally.0.remove("closed within 1 s");
    Ok(Outcome {
        made: opened,
        unit: "connections",
        notes: vec![
            format!(
                "{held} held at a time from {sources} address(es); the issuer had {open_mid} open at mid-phase (limits {} total, {} per source); its connection counters: {}; {closed_at_once} closed within 1 s of opening",
                attack.args.max_connections,
                attack.args.max_connections_per_source,
                counted.join(", ")
            ),
            tally.show(),
        ],
        violations: Vec::new(),
    })
}

#[derive(Clone, Copy, Debug)]
enum Oversized {
    Body,
    Chunked,
    HugeHeader,
    ManyHeaders,
    LongAuthorization,
    LongSecret,
    HugeLength,
    BigClaims,
}

impl Oversized {
    const ALL: [Oversized; 8] = [
        Oversized::Body,
        Oversized::Chunked,
        Oversized::HugeHeader,
        Oversized::ManyHeaders,
        Oversized::LongAuthorization,
        Oversized::LongSecret,
        Oversized::HugeLength,
        Oversized::BigClaims,
    ];

    fn name(self) -> &'static str {
        match self {
            Oversized::Body => "1 MiB body",
            Oversized::Chunked => "chunked 8 MiB body",
            Oversized::HugeHeader => "1 MiB header",
            Oversized::ManyHeaders => "1000 headers",
            Oversized::LongAuthorization => "48 KiB Authorization",
            Oversized::LongSecret => "60 KiB client_secret",
            Oversized::HugeLength => "10 GiB Content-Length",
            Oversized::BigClaims => "assertion with a 40 KiB claim",
        }
    }

    /// The request, in the parts it is written in.
    fn request(self, attack: &Attack, index: usize) -> anyhow::Result<Vec<Bytes>> {
        const FORM: &str = "content-type: application/x-www-form-urlencoded";
        const MIB: usize = 1 << 20;
        let form = |body: Bytes| {
            vec![
                head(&[FORM, &format!("content-length: {}", body.len())]),
                body,
            ]
        };
        Ok(match self {
            Oversized::Body => {
                let mut parts = vec![head(&[FORM, &format!("content-length: {MIB}")])];
                parts.extend((0..16).map(|_| Bytes::from(vec![b'a'; MIB / 16])));
                parts
            }
            Oversized::Chunked => {
                let chunk = Bytes::from(format!("10000\r\n{}\r\n", "a".repeat(0x10000)));
                let mut parts = vec![head(&[FORM, "transfer-encoding: chunked"])];
                parts.extend((0..128).map(|_| chunk.clone()));
                parts.push(Bytes::from_static(b"0\r\n\r\n"));
                parts
            }
            Oversized::HugeHeader => {
                vec![head(&[FORM, &format!("x-big: {}", "a".repeat(MIB))])]
            }
            Oversized::ManyHeaders => {
                let lines: Vec<String> = (0..1000).map(|i| format!("x-h-{i}: v")).collect();
                let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
                vec![head(&lines)]
            }
            Oversized::LongAuthorization => {
                let credentials = STANDARD.encode(format!("{HONEST_ID}:{}", "s".repeat(36_000)));
                let authorization = format!("authorization: Basic {credentials}");
                let body = "grant_type=client_credentials";
                vec![
                    head(&[
                        FORM,
                        &authorization,
                        &format!("content-length: {}", body.len()),
                    ]),
                    Bytes::from_static(body.as_bytes()),
                ]
            }
            Oversized::LongSecret => form(Bytes::from(format!(
                "grant_type=client_credentials&client_id={HONEST_ID}&client_secret={}",
                "s".repeat(60 * 1024)
            ))),
            Oversized::HugeLength => vec![head(&[FORM, "content-length: 10737418240"])],
            Oversized::BigClaims => form(attack.assertion(index, 64, 40 * 1024)?),
        })
    }
}

/// Phase 4: each request on a fresh connection; each connection of the
/// flood sends one kind, so kinds the issuer answers slowly (the 10 GiB
/// Content-Length waits for --request-timeout) do not hold up the others.
async fn big_requests(attack: Arc<Attack>, deadline: Instant) -> anyhow::Result<Outcome> {
    let until = tokio::time::Instant::from_std(deadline);
    let mut workers = tokio::task::JoinSet::new();
    let connections = (attack.args.flood_connections as usize).max(Oversized::ALL.len());
    for worker in 0..connections {
        let attack = attack.clone();
        let kind = Oversized::ALL[worker % Oversized::ALL.len()];
        workers.spawn(async move {
            let mut tally = Tally::default();
            let mut n = worker;
            while Instant::now() < deadline {
                let index = n % attack.args.jwt_clients as usize;
                n += 1;
                let parts = kind.request(&attack, index)?;
                let answer = match attack.target.stream(ATTACKER_SOURCE).await {
                    Ok(stream) => exchange(stream, parts.into_iter(), Duration::ZERO, until).await,
                    Err(_) => Answer::Closed,
                };
                tally.add(format!("{}: {answer}", kind.name()), 1);
            }
            Ok::<_, anyhow::Error>(tally)
        });
    }
    let mut tally = Tally::default();
    while let Some(result) = workers.join_next().await {
        tally.merge(result??);
    }
    let mut outcome = Outcome {
        made: tally.0.values().sum(),
        unit: "requests",
        notes: vec![tally.show()],
        ..Outcome::default()
    };
    for (label, count) in &tally.0 {
        let answer = label.rsplit(": ").next().unwrap_or_default();
        let token = answer == "200" && !label.starts_with(Oversized::BigClaims.name());
        let server_error = answer.len() == 3 && answer.starts_with('5');
        if token || server_error {
            outcome.violations.push(format!(
                "{label} ×{count}: an oversized request must be refused"
            ));
        }
    }
    Ok(outcome)
}

// ------------------------------------------------------------ the run

struct Row {
    phase: Phase,
    outcome: Outcome,
    honest: Honest,
    rss_kib: Vec<u64>,
    /// Lines the issuer logged during the phase.
    log_lines: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn run(args: AttackArgs) -> anyhow::Result<()> {
    ensure!(
        args.seconds > 0.0 && args.honest_rate > 0.0 && args.honest_timeout > 0.0,
        "--seconds, --honest-rate and --honest-timeout must be positive"
    );
    let dir = std::env::temp_dir().join(format!("sigil-attack-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(args, &dir);
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("(the issuer's log is kept in {})", dir.display()),
    }
    result
}

fn run_in(args: AttackArgs, dir: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("attack")
        .build()?;
    let key = es256()?;
    let kid = key.thumbprint();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let mut rng = Rng(seed | 1);
    let honest_secret = format!("{:016x}{:016x}{:016x}", rng.next(), rng.next(), rng.next());
    let (manifests, secrets) = write_manifests(dir, &args, &key, &kid, &honest_secret)?;
    let (mut issuer, tls) = start_issuer(&args, dir, &manifests, &secrets)?;
    runtime.block_on(wait_ready(&mut issuer))?;
    let target = Target {
        addr: issuer.api,
        tls,
    };
    let authorization: Arc<str> = Arc::from(format!(
        "Basic {}",
        STANDARD.encode(format!("{HONEST_ID}:{honest_secret}"))
    ));
    let pid = issuer.pid();
    let attack = Arc::new(Attack {
        run: rng.next(),
        args,
        target: target.clone(),
        issuer,
        key,
        kid,
        counter: AtomicU64::new(0),
    });
    let args = &attack.args;
    // The honest client must work before anything else.
    let check = monitor(
        target.clone(),
        authorization.clone(),
        args,
        pid,
        Instant::now() + Duration::from_millis(300),
    )
    .join()
    .map_err(|_| anyhow::anyhow!("the honest client panicked"))??;
    ensure!(
        check.honest.attempts > 0 && check.honest.successes == check.honest.attempts,
        "the honest client fails without any attack: {}",
        check.honest.failures.show()
    );
    let at_rest = rss_kib(pid).context("no VmRSS for the issuer")?;
    println!(
        "# sigil-bench attack: release issuer (pid {pid}) in standalone mode over {}, {} s per phase; honest client: {} token requests/s with the right client_secret, each on a fresh connection, no retries, {} s timeout; limits: --max-connections {} ({} per source), --max-remembered-assertions {} ({} per client); connection flood from {} address(es); {} cores online",
        if args.plain { "plain HTTP" } else { "TLS" },
        args.seconds,
        args.honest_rate,
        args.honest_timeout,
        args.max_connections,
        args.max_connections_per_source,
        args.max_remembered_assertions,
        args.max_remembered_assertions_per_client,
        args.flood_sources,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("# issuer RSS at rest: {:.1} MiB", mib(at_rest));

    let mut rows = Vec::new();
    for &phase in &args.phases {
        let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
        let lines_before = attack.issuer.log_lines();
        let watch = monitor(target.clone(), authorization.clone(), args, pid, deadline);
        let outcome = runtime.block_on(async {
            let attack = attack.clone();
            match phase {
                Phase::Jti => jti_flood(attack, deadline).await,
                Phase::Secrets => secrets_flood(attack, deadline).await,
                Phase::Connections => connection_flood(attack, deadline).await,
                Phase::Big => big_requests(attack, deadline).await,
            }
        });
        let watched = watch
            .join()
            .map_err(|_| anyhow::anyhow!("the honest client panicked"))??;
        let outcome = outcome.with_context(|| format!("phase {}", phase.name()))?;
        eprintln!(
            "({}: honest {}/{})",
            phase.name(),
            watched.honest.successes,
            watched.honest.attempts
        );
        // Let the issuer close what the phase left behind.
        std::thread::sleep(Duration::from_secs(2));
        rows.push(Row {
            phase,
            outcome,
            honest: watched.honest,
            rss_kib: watched.rss_kib,
            log_lines: attack.issuer.log_lines().saturating_sub(lines_before),
        });
    }

    let bound_kib = args.rss_bound_mib * 1024;
    println!();
    println!(
        "| phase | attack | honest attempts | honest successes | honest success | issuer RSS min MiB | issuer RSS max MiB | bound MiB | issuer log lines |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut failures = Vec::new();
    for row in &rows {
        let percent = 100.0 * row.honest.successes as f64 / row.honest.attempts.max(1) as f64;
        let (min, max) = (
            row.rss_kib.iter().copied().min().unwrap_or(0),
            row.rss_kib.iter().copied().max().unwrap_or(0),
        );
        println!(
            "| {} | {} {} | {} | {} | {:.1}% | {:.1} | {:.1} | {} | {} |",
            row.phase.name(),
            row.outcome.made,
            row.outcome.unit,
            row.honest.attempts,
            row.honest.successes,
            percent,
            mib(min),
            mib(max),
            args.rss_bound_mib,
            row.log_lines
        );
        if row.honest.attempts == 0 || row.honest.successes < row.honest.attempts {
            failures.push(format!(
                "{}: {} of {} honest requests failed ({})",
                row.phase.name(),
                row.honest.attempts - row.honest.successes,
                row.honest.attempts,
                row.honest.failures.show()
            ));
        }
        if max > bound_kib {
            failures.push(format!(
                "{}: issuer RSS {:.1} MiB over the bound of {} MiB",
                row.phase.name(),
                mib(max),
                args.rss_bound_mib
            ));
        }
        failures.extend(
            row.outcome
                .violations
                .iter()
                .map(|v| format!("{}: {v}", row.phase.name())),
        );
    }
    println!();
    for row in &rows {
        for note in &row.outcome.notes {
            println!("- {}: {note}", row.phase.name());
        }
        if !row.honest.failures.0.is_empty() {
            println!(
                "- {}: honest failures: {}",
                row.phase.name(),
                row.honest.failures.show()
            );
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
