//! The soak run of `sigil-dev --soak DURATION` (not part of CI): steady
//! token load against the local issuer while the operator rotates the
//! signing key every minute (forced by annotation) and the client secret
//! every two minutes (`spec.secretRotation`), every token checked by a
//! JWKS-caching verifier, the issuer's RSS sampled. It passes with zero
//! failed requests and zero failed verifications.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use sigil_crds::{OAuthClient, SigningKey, annotations, secret_keys};
use tokio::sync::RwLock;

/// What to soak and for how long.
pub struct Soak {
    pub client: kube::Client,
    pub issuer_url: String,
    pub issuer_pid: u32,
    /// The OAuthClient whose credentials load the issuer.
    pub namespace: String,
    pub name: String,
    pub audience: String,
    /// The SigningKey (in `key_namespace`) that signs its tokens.
    pub key_namespace: String,
    pub key_name: String,
    pub duration: Duration,
    /// Token requests per second, all workers together.
    pub rate: u32,
    pub workers: u32,
}

#[derive(Default)]
struct Counters {
    tokens: AtomicU64,
    failed_requests: AtomicU64,
    failed_verifications: AtomicU64,
    key_rotations: AtomicU64,
    secret_versions: AtomicU64,
}

/// The verifier a resource server would run: a cached JWKS, refetched
/// only when a token names a kid it does not know.
struct Verifier {
    http: reqwest::Client,
    jwks_url: String,
    keys: RwLock<HashMap<String, DecodingKey>>,
    validation: Validation,
}

impl Verifier {
    async fn refresh(&self) -> anyhow::Result<()> {
        let set: JwkSet = self.http.get(&self.jwks_url).send().await?.json().await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if let Some(kid) = &jwk.common.key_id {
                keys.insert(kid.clone(), DecodingKey::from_jwk(jwk)?);
            }
        }
        *self.keys.write().await = keys;
        Ok(())
    }

    async fn verify(&self, token: &str) -> anyhow::Result<()> {
        let kid = jsonwebtoken::decode_header(token)?
            .kid
            .context("token without kid")?;
        if !self.keys.read().await.contains_key(&kid) {
            self.refresh().await?;
        }
        let keys = self.keys.read().await;
        let key = keys.get(&kid).context("kid not in the JWKS")?;
        jsonwebtoken::decode::<serde_json::Value>(token, key, &self.validation)?;
        Ok(())
    }
}

pub async fn run(soak: Soak) -> anyhow::Result<()> {
    let clients: Api<OAuthClient> = Api::namespaced(soak.client.clone(), &soak.namespace);
    let keys: Api<SigningKey> = Api::namespaced(soak.client.clone(), &soak.key_namespace);
    let secrets: Api<Secret> = Api::namespaced(soak.client.clone(), &soak.namespace);
    // Rotations fast enough to see several in ten minutes.
    keys.patch(
        &soak.key_name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"prePublish": "10s", "retireAfter": "5m"}})),
    )
    .await
    .context("setting the SigningKey's prePublish")?;
    clients
        .patch(
            &soak.name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "spec": {"secretRotation": {"interval": "2m", "gracePeriod": "90s"}}
            })),
        )
        .await
        .context("setting the OAuthClient's secretRotation")?;

    let credentials = Arc::new(RwLock::new(read_credentials(&secrets, &soak.name).await?));
    let counters = Arc::new(Counters::default());
    let http = reqwest::Client::new();
    let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_issuer(&[&soak.issuer_url]);
    validation.set_audience(&[&soak.audience]);
    let verifier = Arc::new(Verifier {
        http: http.clone(),
        jwks_url: format!("{}/.well-known/jwks.json", soak.issuer_url),
        keys: RwLock::new(HashMap::new()),
        validation,
    });
    verifier.refresh().await?;
    let token_url = format!("{}/oauth2/token", soak.issuer_url);
    let started = Instant::now();
    let deadline = started + soak.duration;

    // Workers: a steady request rate, every token verified.
    let per_worker = Duration::from_secs_f64(f64::from(soak.workers) / f64::from(soak.rate.max(1)));
    let mut tasks = Vec::new();
    for _ in 0..soak.workers {
        let (http, credentials, counters, verifier, token_url, audience) = (
            http.clone(),
            credentials.clone(),
            counters.clone(),
            verifier.clone(),
            token_url.clone(),
            soak.audience.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_worker);
            while Instant::now() < deadline {
                tick.tick().await;
                let (id, secret) = credentials.read().await.clone();
                let response = http
                    .post(&token_url)
                    .basic_auth(&id, Some(&secret))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("audience", &audience),
                    ])
                    .send()
                    .await;
                let token = match response {
                    Ok(r) if r.status().is_success() => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["access_token"].as_str().map(str::to_owned)),
                    Ok(r) => {
                        eprintln!("soak: token request answered {}", r.status());
                        None
                    }
                    Err(e) => {
                        eprintln!("soak: token request failed: {e}");
                        None
                    }
                };
                let Some(token) = token else {
                    counters.failed_requests.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                counters.tokens.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = verifier.verify(&token).await {
                    eprintln!("soak: verification failed: {e}");
                    counters
                        .failed_verifications
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // The workload's view of its Secret: re-read as the kubelet would
    // sync it (every few seconds), so rotated secrets reach the workers.
    let refresher = {
        let (credentials, counters, name) =
            (credentials.clone(), counters.clone(), soak.name.clone());
        tokio::spawn(async move {
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Ok(fresh) = read_credentials(&secrets, &name).await {
                    let mut current = credentials.write().await;
                    if *current != fresh {
                        counters.secret_versions.fetch_add(1, Ordering::Relaxed);
                        *current = fresh;
                    }
                }
            }
        })
    };

    // Forced key rotations and the RSS curve.
    println!(
        "  t(s)  rss(MiB)  tokens  failed_requests  failed_verifications  key_rotations  secret_versions"
    );
    let mut samples: Vec<f64> = Vec::new();
    let mut next_rotation = started + Duration::from_secs(60);
    let mut next_sample = started;
    while Instant::now() < deadline {
        if Instant::now() >= next_rotation {
            let now = jiff::Timestamp::now().to_string();
            keys.patch(
                &soak.key_name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "metadata": {"annotations": {annotations::ROTATE_REQUESTED_AT: now}}
                })),
            )
            .await
            .context("forcing a key rotation")?;
            counters.key_rotations.fetch_add(1, Ordering::Relaxed);
            next_rotation += Duration::from_secs(60);
        }
        if Instant::now() >= next_sample {
            let rss = rss_mib(soak.issuer_pid)?;
            samples.push(rss);
            println!(
                "{:6} {:9.1} {:7} {:16} {:21} {:14} {:16}",
                started.elapsed().as_secs(),
                rss,
                counters.tokens.load(Ordering::Relaxed),
                counters.failed_requests.load(Ordering::Relaxed),
                counters.failed_verifications.load(Ordering::Relaxed),
                counters.key_rotations.load(Ordering::Relaxed),
                counters.secret_versions.load(Ordering::Relaxed),
            );
            next_sample += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for task in tasks {
        task.await.context("a soak worker panicked")?;
    }
    refresher
        .await
        .context("the credentials refresher panicked")?;

    let (min, max) = samples
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    let failed = counters.failed_requests.load(Ordering::Relaxed);
    let unverified = counters.failed_verifications.load(Ordering::Relaxed);
    println!(
        "soak: {} s, {} tokens, {failed} failed requests, {unverified} failed verifications, {} forced key rotations, {} secret versions seen, issuer RSS {min:.1}–{max:.1} MiB",
        soak.duration.as_secs(),
        counters.tokens.load(Ordering::Relaxed),
        counters.key_rotations.load(Ordering::Relaxed),
        counters.secret_versions.load(Ordering::Relaxed),
    );
    if failed > 0 || unverified > 0 {
        bail!("the soak saw {failed} failed requests and {unverified} failed verifications");
    }
    Ok(())
}

async fn read_credentials(secrets: &Api<Secret>, client: &str) -> anyhow::Result<(String, String)> {
    let secret = secrets
        .get(&format!("{client}-oauth"))
        .await
        .context("reading the client's Secret")?;
    let data = secret.data.unwrap_or_default();
    let field = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .with_context(|| format!("the client's Secret has no {key}"))
    };
    Ok((
        field(secret_keys::CLIENT_ID)?,
        field(secret_keys::CLIENT_SECRET)?,
    ))
}

/// Resident set size of a process, from /proc.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (did the issuer exit?)"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc status")?;
    Ok(kib / 1024.0)
}
