//! `sigil-bench`: the token endpoint against its floor (DESIGN.md §9), all
//! measured in one run on this machine:
//!
//! 1. bare signing per algorithm with a pre-parsed key (one thread);
//! 2. a bare HTTP round trip on the same server stack (axum + hyper, a
//!    trivial form POST handler);
//! 3. `POST /oauth2/token` end to end against the standalone issuer with
//!    10,000 clients loaded from manifests, keep-alive connections from a
//!    load generator on loopback; then again at half the peak rate for p99.
//!
//! The floor is the rate implied by one signature plus one bare round trip:
//! `1 / (1/sign + 1/http)`. Server and load generator each get their own
//! runtime with `--server-threads` / `--client-threads` workers (default 1
//! each, so the numbers are per server core).
//!
//! `sigil-bench timing` instead measures whether authentication failures
//! can be told apart by their latency ([`timing`]); `sigil-bench attack`
//! whether hostile traffic can make the issuer refuse an honest client or
//! outgrow its memory ([`attack`]).

mod attack;
mod timing;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use sigil_core::keys::{ParsedKey, generate_pkcs8_der};
use sigil_crds::SigningAlgorithm;
use sigil_issuer::index::{Store, TokenTyp};
use sigil_issuer::metrics::Metrics;
use sigil_issuer::source::standalone;
use sigil_issuer::state::{App, Settings};

#[derive(Parser, Debug)]
#[command(
    name = "sigil-bench",
    about = "Benchmark the issuer's token endpoint against its floor"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// OAuth clients loaded into the standalone issuer.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Seconds per measurement, split into `--rounds` interleaved slices.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Interleaved rounds; the best one counts.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Worker threads of the server runtime.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Worker threads of the load generator runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Algorithms to measure bare signing for; the first one signs tokens.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ES256,EdDSA,RS256,PS256,ES384"
    )]
    algorithms: Vec<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Statistical timing test of the authentication failure paths: unknown
    /// client vs wrong secret vs bad assertion, with a control.
    Timing(timing::TimingArgs),
    /// Hostile traffic against the release standalone issuer (a child
    /// process) while an honest client fetches tokens: jti flood, failed
    /// authentication flood, connection flood, oversized requests. Fails
    /// unless every honest request succeeds and the issuer's RSS stays
    /// under the bound.
    Attack(attack::AttackArgs),
    /// Serve the floor's routes (`/baseline`, `/baseline-large`,
    /// `/baseline-sign`) on the issuer's server stack with one worker
    /// thread until killed: `bench/peers/run.sh` measures them with `wrk`
    /// beside the token endpoints it compares.
    ServeFloor(ServeFloorArgs),
}

#[derive(clap::Args, Debug)]
struct ServeFloorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18444")]
    listen: SocketAddr,
    /// Algorithm of the one signature `/baseline-sign` makes.
    #[arg(long, default_value = "ES256")]
    algorithm: String,
}

fn algorithm(name: &str) -> anyhow::Result<SigningAlgorithm> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .with_context(|| format!("unknown algorithm {name}"))
}

/// CPU time (ns) this process's threads whose name starts with `prefix`
/// have run, from the scheduler's own accounting (/proc/.../schedstat):
/// unlike wall-clock rates, it does not move when other processes compete
/// for the cores.
fn threads_cpu_ns(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with(prefix))
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split(' ').next().and_then(|ns| ns.parse::<u64>().ok()))
        .sum()
}

fn this_thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split(' ').next().and_then(|ns| ns.parse().ok()))
        .unwrap_or(0)
}

/// Signatures per second on one thread with a pre-parsed key, and the CPU
/// µs one signature takes.
fn bare_signing_cpu(algorithm: SigningAlgorithm, seconds: f64) -> anyhow::Result<(f64, f64)> {
    let key = ParsedKey::from_pkcs8_der(algorithm, &generate_pkcs8_der(algorithm, 2048)?)?;
    let input = vec![b'a'; 400];
    for _ in 0..64 {
        key.sign(&input)?;
    }
    let cpu_before = this_thread_cpu_ns();
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        for _ in 0..64 {
            key.sign(&input)?;
        }
        count += 64;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let cpu_us = (this_thread_cpu_ns() - cpu_before) as f64 / 1e3 / count as f64;
    Ok((rate, cpu_us))
}

/// Signatures per second on one thread with a pre-parsed key.
fn bare_signing(algorithm: SigningAlgorithm, seconds: f64) -> anyhow::Result<f64> {
    let key = ParsedKey::from_pkcs8_der(algorithm, &generate_pkcs8_der(algorithm, 2048)?)?;
    // A typical header.claims signing input (~400 bytes).
    let input = vec![b'a'; 400];
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        key.sign(&input)?;
    }
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        for _ in 0..64 {
            key.sign(&input)?;
        }
        count += 64;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

struct LoadResult {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }
}

/// One request to send: path, Authorization header, body.
#[derive(Clone)]
struct Shot {
    authorization: Option<String>,
    body: Bytes,
}

/// Drives `connections` keep-alive HTTP/1.1 connections for `seconds`,
/// each sending the shots round-robin; paced to `rate` requests/s in total
/// if given (else closed loop, as fast as answers come).
async fn load(
    addr: SocketAddr,
    path: &'static str,
    shots: Arc<Vec<Shot>>,
    connections: usize,
    seconds: f64,
    rate: Option<f64>,
) -> anyhow::Result<LoadResult> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let shots = shots.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await?;
            let mut pacing = rate.map(|r| {
                // Connections tick evenly spread over one period, so the
                // paced load arrives smoothly rather than in bursts.
                let period = Duration::from_secs_f64(connections as f64 / r);
                let offset = period.mul_f64(connection as f64 / connections as f64);
                let mut interval =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
            let mut latencies = Vec::new();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut next = connection * 7919;
            while Instant::now() < deadline {
                if let Some(interval) = pacing.as_mut() {
                    interval.tick().await;
                }
                let shot = &shots[next % shots.len()];
                next += 1;
                let (status, elapsed) =
                    timed_form_post(&mut sender, path, shot.authorization.as_deref(), &shot.body)
                        .await?;
                latencies.push(elapsed.as_micros().min(u128::from(u32::MAX)) as u32);
                if status.is_success() {
                    ok += 1;
                } else {
                    errors += 1;
                }
            }
            Ok::<_, anyhow::Error>((ok, errors, latencies))
        }));
    }
    let mut result = LoadResult {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (ok, errors, latencies) = task.await??;
        result.requests += ok;
        result.errors += errors;
        result.latencies_us.extend(latencies);
    }
    result.elapsed = started.elapsed();
    result.latencies_us.sort_unstable();
    Ok(result)
}

const BASELINE_THREADS: &str = "bench-baseline";
const ISSUER_THREADS: &str = "bench-issuer";

/// The floor's routes on the issuer's server stack: a bare form POST
/// answering a small body (`/baseline`) or a token-sized one
/// (`/baseline-large`, with an `access_token` member so an outside load
/// generator's response check passes), and the latter plus one signature
/// with a pre-parsed key (`/baseline-sign`: the floor measured directly).
fn floor_router(algorithm: SigningAlgorithm) -> anyhow::Result<Router> {
    let key = Arc::new(ParsedKey::from_pkcs8_der(
        algorithm,
        &generate_pkcs8_der(algorithm, 2048)?,
    )?);
    let large_body: &'static str =
        Box::leak(format!("{{\"access_token\":\"{}\"}}", "a".repeat(800)).into_boxed_str());
    let headers = [
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
    ];
    Ok(Router::new()
        .route(
            "/baseline-large",
            post(move |body: Bytes| async move {
                let _ = body.len();
                (headers, large_body)
            }),
        )
        .route(
            "/baseline-sign",
            post(move |body: Bytes| {
                let key = key.clone();
                async move {
                    // A token's signing input is about this long.
                    let input = [body.as_ref(), &[b'a'; 400][..]].concat();
                    match key.sign(&input) {
                        Ok(_) => (hyper::StatusCode::OK, headers, large_body),
                        Err(_) => (hyper::StatusCode::INTERNAL_SERVER_ERROR, headers, "{}"),
                    }
                }
            }),
        )
        .route(
            "/baseline",
            post(move |body: Bytes| async move {
                let _ = body.len();
                (headers, r#"{"ok":true}"#)
            }),
        ))
}

/// `sigil-bench serve-floor`: the floor's routes on one server thread
/// until killed, for `bench/peers/run.sh` to drive with the same load
/// generator as the servers it compares.
fn serve_floor(args: ServeFloorArgs) -> anyhow::Result<()> {
    let router = floor_router(algorithm(&args.algorithm)?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(BASELINE_THREADS)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        eprintln!("serving the floor's routes on http://{}", args.listen);
        sigil_issuer::http::serve::serve_listener(listener, router)
            .await
            .context("serving")
    })
}

/// Starts `router` on a loopback port in its own runtime.
fn start_server(
    router: Router,
    threads: usize,
    thread_name: &str,
) -> anyhow::Result<(tokio::runtime::Runtime, SocketAddr)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(thread_name)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    runtime.spawn(async move {
        if let Err(error) = sigil_issuer::http::serve::serve_listener(listener, router).await {
            eprintln!("bench server failed: {error}");
        }
    });
    Ok((runtime, addr))
}

/// A standalone issuer built the way `issuer --manifests` builds it.
fn standalone_issuer(
    dir: &Path,
    clients: usize,
    algorithm: SigningAlgorithm,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(Arc<App>, Vec<Shot>)> {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let mut yaml = String::new();
    for i in 0..clients {
        yaml.push_str(&format!(
            "---\napiVersion: sigil.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: client-{i}, namespace: bench}}\nspec:\n  scopes: [event.view, event.create, file.view]\n  audiences: [event, file]\n"
        ));
    }
    yaml.push_str(&format!(
        "---\napiVersion: sigil.dev/v1alpha1\nkind: SigningKey\nmetadata: {{name: default, namespace: sigil-system}}\nspec: {{algorithm: {}}}\n",
        algorithm.as_str()
    ));
    std::fs::write(manifests.join("clients.yaml"), yaml)?;
    let secrets_path = dir.join("secrets.json");
    let _ = std::fs::remove_file(&secrets_path);
    let store = Arc::new(Store::new("default"));
    let (loaded, secrets) = standalone::load_into(&store, &manifests, &secrets_path)?;
    runtime.block_on(standalone::start_rings(
        &store,
        &loaded.signing_keys,
        "default",
        None,
    ))?;
    store.mark_synced();
    let settings = Settings {
        token_typ: TokenTyp::AtJwt,
        ..Settings::new(sigil_core::IssuerUrl::parse("http://127.0.0.1").expect("a valid URL"))
    };
    let app = Arc::new(App::new(store, Arc::new(Metrics::new()), &settings)?);
    let shots = secrets
        .iter()
        .map(|(id, secret)| Shot {
            authorization: Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{id}:{secret}"))
            )),
            body: Bytes::from_static(b"grant_type=client_credentials"),
        })
        .collect();
    Ok((app, shots))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn best(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// The token pipeline without HTTP (authenticate, narrow, claims, sign,
/// body) on one thread: what the handler itself costs.
fn pipeline_rate(app: &App, shots: &[Shot], seconds: f64) -> anyhow::Result<f64> {
    let form = sigil_issuer::http::form::parse_form(b"grant_type=client_credentials")?;
    let requests: Vec<sigil_issuer::http::form::FormRequest> = shots
        .iter()
        .take(1000)
        .map(|shot| sigil_issuer::http::form::FormRequest {
            source: Some(std::net::IpAddr::from([127, 0, 0, 1])),
            authorization: shot
                .authorization
                .as_deref()
                .and_then(|a| axum::http::HeaderValue::from_str(a).ok()),
            form: form.clone(),
        })
        .collect();
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        for request in &requests {
            let now = sigil_issuer::http::token::unix_now();
            let client = sigil_issuer::http::client_auth::authenticate_request(app, request, now)?;
            let (token, expires_in, scope) =
                sigil_issuer::http::token::issue(app, &client, &request.form, now)?;
            std::hint::black_box(sigil_issuer::http::token::token_response_body(
                &token, expires_in, &scope,
            ));
        }
        count += requests.len() as u64;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    match args.command {
        Some(Command::Timing(timing)) => return timing::run(timing),
        Some(Command::Attack(attack)) => return attack::run(attack),
        Some(Command::ServeFloor(serve)) => return serve_floor(serve),
        None => {}
    }
    let algorithms = args
        .algorithms
        .iter()
        .map(|a| algorithm(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let token_algorithm = *algorithms.first().context("give at least one algorithm")?;
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("bench-load")
        .enable_all()
        .build()?;
    let rounds = args.rounds.max(1);
    let slice = args.seconds / rounds as f64;

    println!(
        "# sigil-bench: {} server thread(s), {} load thread(s), {} connections, {} rounds of {:.2} s per measurement, {} cores online",
        args.server_threads,
        args.client_threads,
        args.connections,
        rounds,
        slice,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "# Measurements are interleaved in rounds and the best round counts, so a noisy neighbour on a shared machine skews all of them alike."
    );

    // Servers: the bare baseline and the standalone issuer, each on its own runtime.
    let baseline = floor_router(token_algorithm)?;
    let (baseline_runtime, baseline_addr) =
        start_server(baseline, args.server_threads, BASELINE_THREADS)?;
    let dir = std::env::temp_dir().join(format!("sigil-bench-{}", std::process::id()));
    let setup = Instant::now();
    let (issuer_app, shots) =
        standalone_issuer(&dir, args.clients, token_algorithm, &client_runtime)?;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "(loaded {} clients from manifests in {:.2} s)",
        args.clients,
        setup.elapsed().as_secs_f64()
    );
    let (issuer_runtime, issuer_addr) = start_server(
        sigil_issuer::http::api_router(issuer_app.clone()),
        args.server_threads,
        ISSUER_THREADS,
    )?;
    let baseline_shot = Arc::new(vec![Shot {
        authorization: None,
        body: Bytes::from_static(b"grant_type=client_credentials"),
    }]);
    let shots = Arc::new(shots);

    // Warm-up.
    client_runtime.block_on(load(
        baseline_addr,
        "/baseline",
        baseline_shot.clone(),
        args.connections,
        0.3,
        None,
    ))?;
    client_runtime.block_on(load(
        issuer_addr,
        "/oauth2/token",
        shots.clone(),
        args.connections,
        0.3,
        None,
    ))?;

    let (mut sign, mut http, mut token, mut pipeline) = (vec![], vec![], vec![], vec![]);
    let mut token_loads = Vec::new();
    let mut http_loads = Vec::new();
    let (mut sign_cpu, mut http_cpu, mut token_cpu) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (rate, cpu) = bare_signing_cpu(token_algorithm, slice.min(0.5))?;
        sign.push(rate);
        sign_cpu.push(cpu);
        pipeline.push(pipeline_rate(&issuer_app, &shots, slice.min(0.5))?);
        let cpu_before = threads_cpu_ns(BASELINE_THREADS);
        let h = client_runtime.block_on(load(
            baseline_addr,
            "/baseline",
            baseline_shot.clone(),
            args.connections,
            slice,
            None,
        ))?;
        http_cpu.push(
            (threads_cpu_ns(BASELINE_THREADS) - cpu_before) as f64 / 1e3 / h.requests.max(1) as f64,
        );
        http.push(h.rate());
        http_loads.push(h);
        let cpu_before = threads_cpu_ns(ISSUER_THREADS);
        let t = client_runtime.block_on(load(
            issuer_addr,
            "/oauth2/token",
            shots.clone(),
            args.connections,
            slice,
            None,
        ))?;
        token_cpu.push(
            (threads_cpu_ns(ISSUER_THREADS) - cpu_before) as f64 / 1e3 / t.requests.max(1) as f64,
        );
        token.push(t.rate());
        token_loads.push(t);
    }
    let mut extra_rows = Vec::new();
    for (what, path) in [
        (
            "bare round trip answering a token-sized body",
            "/baseline-large",
        ),
        (
            "bare round trip + one signature (the floor, measured directly)",
            "/baseline-sign",
        ),
    ] {
        let cpu_before = threads_cpu_ns(BASELINE_THREADS);
        let result = client_runtime.block_on(load(
            baseline_addr,
            path,
            baseline_shot.clone(),
            args.connections,
            slice,
            None,
        ))?;
        let cpu_us = (threads_cpu_ns(BASELINE_THREADS) - cpu_before) as f64
            / 1e3
            / result.requests.max(1) as f64;
        extra_rows.push((what, cpu_us));
    }
    let best_token_load = token_loads
        .iter()
        .max_by(|a, b| a.rate().total_cmp(&b.rate()))
        .context("a round")?;
    let best_http_load = http_loads
        .iter()
        .max_by(|a, b| a.rate().total_cmp(&b.rate()))
        .context("a round")?;
    let half = client_runtime.block_on(load(
        issuer_addr,
        "/oauth2/token",
        shots.clone(),
        args.connections,
        args.seconds.min(5.0),
        Some(best(&token) / 2.0),
    ))?;
    baseline_runtime.shutdown_background();
    issuer_runtime.shutdown_background();

    println!();
    println!("## 1. Bare signing with a pre-parsed key, one thread");
    println!("| alg | signatures/s | µs/signature |");
    println!("| --- | ---: | ---: |");
    for alg in &algorithms {
        let rate = if *alg == token_algorithm {
            best(&sign)
        } else {
            bare_signing(*alg, 0.5)?
        };
        println!("| {} | {:.0} | {:.1} |", alg.as_str(), rate, 1e6 / rate);
    }
    println!();
    println!(
        "## 2. HTTP, {} keep-alive connections on loopback",
        args.connections
    );
    println!("| what | best requests/s | median requests/s | p50 ms | p99 ms | errors |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| bare round trip (axum + hyper, form POST → small JSON) | {:.0} | {:.0} | {:.3} | {:.3} | {} |",
        best(&http),
        median(&http),
        best_http_load.percentile_ms(0.5),
        best_http_load.percentile_ms(0.99),
        http_loads.iter().map(|l| l.errors).sum::<u64>()
    );
    println!(
        "| POST /oauth2/token, standalone, {} clients, {}, client_secret_basic | {:.0} | {:.0} | {:.3} | {:.3} | {} |",
        args.clients,
        token_algorithm.as_str(),
        best(&token),
        median(&token),
        best_token_load.percentile_ms(0.5),
        best_token_load.percentile_ms(0.99),
        token_loads.iter().map(|l| l.errors).sum::<u64>()
    );
    println!(
        "| POST /oauth2/token at half the peak rate (paced) | {:.0} | – | {:.3} | {:.3} | {} |",
        half.rate(),
        half.percentile_ms(0.5),
        half.percentile_ms(0.99),
        half.errors
    );
    println!();
    println!(
        "token pipeline without HTTP (authenticate + narrow + claims + sign + body), one thread: best {:.0}/s ({:.1} µs each)",
        best(&pipeline),
        1e6 / best(&pipeline)
    );

    // Time inside the token handler, from the issuer's own histogram.
    let metrics_text = issuer_app.metrics.encode();
    let metric = |name: &str| {
        metrics_text
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let handler_mean_us = metric("sigil_issuer_token_request_duration_seconds_sum")
        / metric("sigil_issuer_token_request_duration_seconds_count")
        * 1e6;
    println!("mean time inside the token handler over HTTP: {handler_mean_us:.1} µs");

    let least = |values: &[f64]| values.iter().copied().fold(f64::INFINITY, f64::min);
    let (sign_us, http_us, token_us) = (least(&sign_cpu), least(&http_cpu), least(&token_cpu));
    println!();
    println!(
        "## Server CPU per request (scheduler accounting of the server threads; immune to other load)"
    );
    println!("| what | CPU µs | per core /s |");
    println!("| --- | ---: | ---: |");
    println!(
        "| one {} signature (pre-parsed key) | {:.1} | {:.0} |",
        token_algorithm.as_str(),
        sign_us,
        1e6 / sign_us
    );
    println!(
        "| bare HTTP round trip | {:.1} | {:.0} |",
        http_us,
        1e6 / http_us
    );
    for (what, cpu_us) in &extra_rows {
        println!("| {what} | {cpu_us:.1} | {:.0} |", 1e6 / cpu_us);
    }
    println!(
        "| POST /oauth2/token | {:.1} | {:.0} |",
        token_us,
        1e6 / token_us
    );

    let wall_floor = 1.0 / (1.0 / best(&sign) + 1.0 / best(&http));
    let wall_ratio = best(&token) / wall_floor;
    let cpu_floor = 1e6 / (sign_us + http_us);
    let cpu_ratio = (1e6 / token_us) / cpu_floor;
    let p99 = half.percentile_ms(0.99);
    println!();
    println!("## Against DESIGN.md §9");
    println!(
        "per core (CPU): floor = 1 / ({:.1} µs signing + {:.1} µs bare round trip) = {:.0}/s; token endpoint {:.0}/s = {:.0}% of the floor (target ≥ 75%: {})",
        sign_us,
        http_us,
        cpu_floor,
        1e6 / token_us,
        cpu_ratio * 100.0,
        if cpu_ratio >= 0.75 { "met" } else { "NOT met" },
    );
    println!(
        "wall clock: floor = 1 / (1/{:.0} signatures/s + 1/{:.0} round trips/s) = {:.0}/s; token endpoint {:.0}/s = {:.0}% of it",
        best(&sign),
        best(&http),
        wall_floor,
        best(&token),
        wall_ratio * 100.0,
    );
    println!(
        "p99 at half the peak rate = {:.3} ms (target < 2 ms: {})",
        p99,
        if p99 < 2.0 { "met" } else { "NOT met" },
    );
    let errors = token_loads.iter().map(|l| l.errors).sum::<u64>() + half.errors;
    if errors > 0 {
        anyhow::bail!(
            "the token endpoint answered {errors} requests with errors during the benchmark"
        );
    }
    Ok(())
}
/// A TCP connection to `addr` without Nagle delay, from the local address
/// `source` if given (any of 127.0.0.0/8 on loopback, so one machine can
/// play many clients).
pub(crate) async fn tcp_connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> anyhow::Result<tokio::net::TcpStream> {
    let stream = match source {
        None => tokio::net::TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A keep-alive HTTP/1.1 client connection over `io` (TCP, or TLS over
/// it), its driver running on the current runtime.
pub(crate) async fn http1<IO>(
    io: IO,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, driver) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(driver);
    Ok(sender)
}

/// A keep-alive HTTP/1.1 connection to `addr` (no Nagle delay), its driver
/// running on the current runtime.
pub(crate) async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    http1(tcp_connect(addr, None).await?).await
}

/// `GET path` over `sender`: the status and the body.
pub(crate) async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let request = hyper::Request::get(path)
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

/// One form POST over `sender`, timed from send to the end of the body as
/// the client sees it.
pub(crate) async fn timed_form_post(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
    authorization: Option<&str>,
    body: &Bytes,
) -> anyhow::Result<(hyper::StatusCode, Duration)> {
    let mut request = hyper::Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let request = request.body(Full::new(body.clone()))?;
    sender.ready().await?;
    let sent = Instant::now();
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok((status, sent.elapsed()))
}
